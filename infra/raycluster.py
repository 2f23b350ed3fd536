"""Ray bootstrap: join `FLEET_RAY_ADDRESS`, fleetd's own local Ray daemon, or a local Ray.

`fleet up` without `FLEET_RAY_ADDRESS` runs its local Ray as a daemon of its own, as tmux
runs the agents' sessions: `ray start --head` in a session of its own (so a kill -9 of `fleet
up` leaves it running), recorded in `<state_dir>/ray.json` (GCS address and session id). The
next `fleet up` joins it if it is alive: the detached supervisor and agent actors are still
there, so re-adopting them is a lookup, not a worker start per agent. A clean stop of `fleet
up` ends exactly the processes of that session (never `ray stop`, which would end every Ray
on the machine). Ray's files stay in its default temp dir (/tmp/ray): a state dir is often
too deep for Ray's unix socket paths (~107 characters).

`start(None)` (the tests' own Ray) still starts a Ray inside the calling process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from schemas.errors import RayStartFailed

log = logging.getLogger(__name__)

NAMESPACE = "fleetd"
DAEMON_FILE = "ray.json"
START_TIMEOUT_S = 120.0  # a guard against a hung `ray start`; it takes ~2 s
STOP_GRACE_S = 1.0  # SIGTERM, then SIGKILL, as ray.shutdown() ends a local Ray
KILLED_WAIT_S = 10.0
# Loopback, so no auth token in $HOME; and none of Ray's own bookkeeping that fleetd never reads,
# which every worker pays for while it waits: per-handler event statistics, metrics recording
# and export, and task events sent to the GCS for the state API and the timeline (an empty
# async actor: 0.67% of a core with them, 0.60% without, 20 actors on 2026-12-07).
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_event_stats": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_metrics_report_interval_ms": "3600000",
    "RAY_task_events_report_interval_ms": "0",
    # Ray starts workers at nice 15, and each tmux server and pane an actor starts inherits it;
    # actors lower Ray's own threads instead (infra/priority.py).
    "RAY_worker_niceness": "0",
    # Two malloc arenas per process, not one per thread that allocated (infra/heap.py).
    "MALLOC_ARENA_MAX": "2",
}


def start(address: str | None, *, num_cpus: int | None = None) -> str:
    """Connect the driver to Ray; return the cluster's address (GCS host:port)."""
    import ray

    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    context = ray.init(
        # "local" starts a Ray of our own even when a `ray start` cluster is on this machine
        # (ray.init(None) would join it, through /tmp/ray/ray_current_cluster).
        address=address or "local",
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        num_cpus=num_cpus if address is None else None,
    )
    info: dict[str, Any] = getattr(context, "address_info", {})
    return str(info.get("gcs_address") or info.get("address") or "")


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# -- fleetd's own Ray daemon ---------------------------------------------------------------------


class RayDaemon(msgspec.Struct, frozen=True, kw_only=True):
    """What `<state_dir>/ray.json` records of the daemon: where its GCS listens, and the
    session id shared by every process of it (GCS, raylet, agents, workers)."""

    gcs_address: str
    session: int

    @property
    def gcs_port(self) -> int:
        return int(self.gcs_address.rpartition(":")[2])


def daemon_file(state_dir: Path) -> Path:
    return state_dir / DAEMON_FILE


def read_daemon(state_dir: Path) -> RayDaemon | None:
    try:
        return msgspec.json.decode(daemon_file(state_dir).read_bytes(), type=RayDaemon)
    except (OSError, msgspec.DecodeError):
        return None


def processes(daemon: RayDaemon, *, check_gcs: bool = True) -> list[psutil.Process]:
    """Every live process of the daemon's session; [] if that session is not a Ray of ours:
    none in it names our GCS port (the GCS itself, or the raylet and Ray's agents, which name
    its address), so the session id was reused, or the daemon is gone."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name", "status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if (
                proc.info["status"] != psutil.STATUS_ZOMBIE
                and os.getsid(proc.pid) == daemon.session
            ):
                found.append(proc)
    if not check_gcs:
        return found
    ours = re.compile(rf"--gcs[-_](?:server_port=|address=\S*:){daemon.gcs_port}\b")
    for proc in found:
        with contextlib.suppress(psutil.Error):
            if any(ours.match(arg) for arg in proc.cmdline()):
                return found
    return []


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError, ValueError):
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    return False


def alive(daemon: RayDaemon) -> bool:
    """Its GCS and raylet run, and the GCS accepts connections."""
    names = {p.info["name"] for p in processes(daemon)}
    return {"gcs_server", "raylet"} <= names and _answers(daemon.gcs_address)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _log_tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _session(session: int) -> list[psutil.Process]:
    return processes(RayDaemon(gcs_address="", session=session), check_gcs=False)


def _running(proc: psutil.Process) -> bool:
    """Not gone and not a zombie: an ended process whose new parent (init, which may reap
    lazily in a container) has not collected it yet counts as ended."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_ended(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has ended or `timeout` passed; those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _running(p)]
    return left


def _end(procs: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is left after `STOP_GRACE_S`; waited for."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    left = _wait_ended(procs, STOP_GRACE_S)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_ended(left, KILLED_WAIT_S)


def start_daemon(state_dir: Path, *, num_cpus: int | None = None) -> RayDaemon:
    """`ray start --head` in a session of its own; recorded in `<state_dir>/ray.json`.

    The GCS listens on every address; fleetd reaches it on loopback. A start that fails is
    tried once more: `ray start` gives its raylet a fixed 30 s to register ("The current
    node timed out during startup ... the GCS has become overloaded"), which a loaded 2-core
    machine can take, and a second start finds the files the first one loaded in memory."""
    try:
        return _start_daemon(state_dir, num_cpus)
    except RayStartFailed as first:
        log.warning("local Ray did not start (%s; see %s); again", first.reason, first.log_path)
        return _start_daemon(state_dir, num_cpus)


def _start_daemon(state_dir: Path, num_cpus: int | None) -> RayDaemon:
    port = _free_port()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
               "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "ray-start.log"
    with log_path.open("ab") as logf:
        cli = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=logf,
                               stderr=subprocess.STDOUT, env={**RAY_ENV, **os.environ},
                               start_new_session=True)  # fmt: skip
        try:
            status = cli.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            cli.kill()
            status = cli.wait()
    daemon = RayDaemon(gcs_address=f"127.0.0.1:{port}", session=cli.pid)
    if status != 0 or not alive(daemon):
        _end(_session(cli.pid))  # whatever it did start
        why = f"`ray start` exited with status {status}" if status else "its GCS does not answer"
        raise RayStartFailed(why, str(log_path), _log_tail(log_path))
    tmp = daemon_file(state_dir).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.encode(daemon) + b"\n")
    os.replace(tmp, daemon_file(state_dir))
    log.info("local Ray daemon started: GCS %s, session %d", daemon.gcs_address, daemon.session)
    return daemon


def ensure_daemon(
    state_dir: Path, *, num_cpus: int | None = None, fresh: bool = False
) -> RayDaemon:
    """The daemon `<state_dir>/ray.json` names if it is alive (a crashed `fleet up` left it
    running, with every actor in it), else a new one; always a new one if `fresh`."""
    found = read_daemon(state_dir)
    if found is not None and not fresh and alive(found):
        log.info("joining the local Ray daemon left running: GCS %s", found.gcs_address)
        return found
    if found is not None:  # half dead (a GCS without its raylet), or unwanted: ended
        _end(processes(found))
    return start_daemon(state_dir, num_cpus=num_cpus)


def stop_daemon(state_dir: Path, daemon: RayDaemon) -> None:
    """End every process of the daemon's session, and forget it. Never `ray stop`."""
    _end(processes(daemon))
    if read_daemon(state_dir) == daemon:
        daemon_file(state_dir).unlink(missing_ok=True)

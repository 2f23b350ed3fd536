"""kill -9 of the whole control plane (the `fleet up --detach` process, its nats-server and
its Ray: GCS, raylet, workers, the supervisor and the agent actors) while agents run, one of
them with an HTTP service on a leased port. The agents' tmux sessions live on in their own
tmux server; the next `fleet up` re-adopts every agent: RUNNING in the same session, the
service answering on the same port, one lease per (agent, port name) and no port leased twice,
and `send` works on each. The time from the second `fleet up` to every agent answering is
printed as a JSON line, not asserted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import psutil

from infra import kvscan, natsauth
from infra.nats import connect
from schemas import subjects
from tests.fleetcli import fleet_cli, fleet_state
from tests.integration.conftest import wait_until

GUARD_S = 60.0  # only stops a hung wait from hanging the suite; nothing is timed
AGENTS = {"w1": "web-demo", "s1": "shell", "s2": "shell"}
WEB = "w1"
API_PORT = "api.http"
RECOVERY_TARGET_S = 10.0  # issue 8's target for 200 agents; printed, never asserted


def wait_for(check: Any, what: str) -> Any:
    return wait_until(check, what, timeout=GUARD_S, interval=0.1)


def http_ok(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/healthz"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
        return bool(reply.status == 200)
    return False


def show(env: dict[str, str], agent: str) -> dict[str, Any] | None:
    done = fleet_cli(env, "show", agent, "--json")
    if done.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def sessions(env: dict[str, str]) -> set[str]:
    done = subprocess.run(
        ["tmux", "-L", env["FLEET_TMUX_SOCKET"], "ls", "-F", "#{session_name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(done.stdout.split())


# -- the control plane's processes -------------------------------------------------------------


def _sessions_of_ray(gcs_address: str) -> set[int]:
    """The session of the GCS listening on `gcs_address` (its raylet and workers share it,
    whether `fleet up` started Ray inside itself or as a daemon of its own)."""
    port = f"--gcs_server_port={gcs_address.rpartition(':')[2]}"
    found: set[int] = set()
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["name"] == "gcs_server" and port in proc.cmdline():
                found.add(os.getsid(proc.pid))
    return found


def control_plane(pid: int, gcs_address: str) -> list[psutil.Process]:
    """`fleet up` and everything of its session and its Ray's, with their descendants; never
    the tmux server (it daemonizes into a session of its own) nor the agents' panes."""
    roots = {pid} | _sessions_of_ray(gcs_address)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid in roots or os.getsid(proc.pid) in roots:
                found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({child.pid: child for child in proc.children(recursive=True)})
    return [p for p in found.values() if p.pid != os.getpid()]


def name_of(proc: psutil.Process) -> str:
    """Its name, or "" once it has exited."""
    try:
        return proc.name()
    except psutil.Error:
        return ""


def of_ray(gcs_address: str) -> list[psutil.Process]:
    """Every live process that names the GCS (its raylet, workers and agents do), wherever
    its session: what a kill of the plane must not leave behind."""
    port = gcs_address.rpartition(":")[2]
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            args = proc.cmdline()
            named = any(
                a == f"--gcs_server_port={port}"
                or (a.startswith(("--gcs-address=", "--gcs_address=")) and a.endswith(f":{port}"))
                for a in args
            )
            if named and running(proc):
                found.append(proc)
    return found


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan that init has not reaped yet has ended)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_all(procs: list[psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP all first (none can react to another's death), then SIGKILL; the survivors."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
    deadline = time.monotonic() + 10
    left = [p for p in procs if running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if running(p)]
    return left


async def leases(env: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """Every lease in the `fleet_ports` bucket: (port, lease)."""
    state = fleet_state(env)
    control = natsauth.read_credential(state["nats_creds"])
    nc = await connect(natsauth.with_credential(state["nats_url"], control), name="fault-ports")
    try:
        rows = await kvscan.rows(nc.jetstream(), subjects.PORTS_BUCKET)
    finally:
        await nc.close()
    return [(int(r.key), msgspec.json.decode(r.value)) for r in rows if r.key.isdigit()]


def test_a_killed_control_plane_is_replaced_and_every_agent_readopted(
    up_env: dict[str, str], repo: Path
) -> None:
    began = time.monotonic()
    first_up = fleet_cli(up_env, "up", "--detach", "--json")
    assert first_up.returncode == 0, first_up.stderr
    cold_start_s = time.monotonic() - began
    before: dict[str, dict[str, Any]] = {}
    for name, template in AGENTS.items():
        args = ("spawn", "--repo", str(repo), "--name", name, "--template", template, "--json")
        spawned = fleet_cli(up_env, *args)
        assert spawned.returncode == 0, spawned.stderr
        before[name] = json.loads(spawned.stdout)
    port = before[WEB]["ports"][API_PORT]
    wait_for(lambda: http_ok(port), f"{WEB}'s api on its leased port {port}")
    api_pid = wait_for(
        lambda: ((show(up_env, WEB) or {}).get("services") or {}).get("api", {}).get("pid"),
        f"{WEB}'s api pid",
    )

    state = fleet_state(up_env)
    plane = control_plane(state["pid"], state["ray_address"])
    names = {name_of(p) for p in plane}  # a short-lived child (a probe, a git) may be gone
    assert {"gcs_server", "raylet", "nats-server"} <= names, names
    assert not {p.pid for p in plane} & {api_pid}, "the agents' services are not the plane's"
    ray_procs = {p.pid for p in of_ray(state["ray_address"])}
    assert len(ray_procs) >= 2 and ray_procs <= {p.pid for p in plane}, ray_procs
    survivors = kill_all(plane)
    assert survivors == [], f"left running after kill -9: {survivors}"
    assert of_ray(state["ray_address"]) == [], "a process of the killed Ray lives on"
    assert sessions(up_env) >= {f"fleet-{a}" for a in AGENTS}, "sessions outlive the plane"
    assert http_ok(port), "the service outlives the control plane, in its tmux pane"

    restart = time.monotonic()
    second_up = fleet_cli(up_env, "up", "--detach", "--json")
    assert second_up.returncode == 0, second_up.stderr
    after = {
        a: wait_for(
            lambda a=a: (v := show(up_env, a)) and v["lifecycle"] == "RUNNING" and v,
            f"{a} to answer RUNNING",
        )
        for a in AGENTS
    }
    recovered_s = time.monotonic() - restart
    print(
        json.dumps(
            {
                "metric": "recovery_after_control_plane_kill_s",
                "value": round(recovered_s, 3),
                "unit": "s",
                "floor": round(cold_start_s, 3),  # a cold `fleet up` with no agents, this run
                "ratio": round(recovered_s / cold_start_s, 3),
                "agents": len(AGENTS),
                "target": RECOVERY_TARGET_S,
            }
        )
    )

    for a in AGENTS:
        assert after[a]["tmux"] == before[a]["tmux"], a
        assert after[a]["actor"]["pid"] != before[a]["actor"]["pid"], "a new actor, not the old"
        assert after[a]["ports"] == before[a]["ports"], a
    wait_for(lambda: http_ok(port), f"{WEB}'s api on the same port {port}")

    held = asyncio.run(leases(up_env))
    per_name = Counter((lease["agent"], lease["name"]) for _, lease in held)
    assert all(n == 1 for n in per_name.values()), per_name
    by_port = Counter(p for p, _ in held)
    assert all(n == 1 for n in by_port.values()), by_port
    leased = {(lease["agent"], lease["name"]): p for p, lease in held}
    assert leased == {(WEB, API_PORT): port}, held

    for a in AGENTS:
        sent = fleet_cli(up_env, "send", a, "echo", f"still-{a}")
        assert sent.returncode == 0, sent.stderr
    for a in AGENTS:
        wait_for(
            lambda a=a: f"still-{a}" in fleet_cli(up_env, "logs", a, "-n", "50").stdout,
            f"{a}'s pane to show what was sent",
        )

"""One nats-server per store, and none that outlives its `fleet up`.

Two servers on one JetStream store would both write it: the store would be corrupted. Two
guards keep that from happening after a crash of `fleet up` (kill -9, OOM):

- the server dies with its parent: `PR_SET_PDEATHSIG` (Linux) sends it SIGTERM, a graceful
  shutdown that flushes the store, the moment the thread that started it is gone;
- a pid file on the store (`<store>/fleetd-server.json`: pid and client port) names the
  server that runs on it; a new start stops a live one first (an orphan, say from a start
  that raced its parent's death), and reuses its port when free, so clients that outlived
  the old `fleet up` (agent actors, the supervisor) reconnect to the same URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PID_FILE_NAME = "fleetd-server.json"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent thread exits
STOP_TIMEOUT_S = 10.0


def pid_file(store_dir: Path) -> Path:
    return store_dir / PID_FILE_NAME


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when this process dies; None off Linux.

    The libc function is looked up here, in the parent: the child, forked from a process that
    may run threads (Ray's), only makes the one call before exec."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: no signal will come
            os._exit(1)

    return in_child


def record(store_dir: Path, pid: int, port: int) -> None:
    """Name the server now running on `store_dir` (atomically: a reader never sees half)."""
    path = pid_file(store_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": pid, "port": port}) + "\n")
    os.replace(tmp, path)


def _recorded(store_dir: Path) -> tuple[int, int]:
    """(pid, port) from the pid file; (0, 0) when there is none or it cannot be read."""
    try:
        found = json.loads(pid_file(store_dir).read_text())
        return int(found["pid"]), int(found["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def _server_on(pid: int, markers: list[str]) -> psutil.Process | None:
    """The live nats-server `pid` if its command line names one of `markers` (the store or
    its config); None for a dead pid, a zombie, or a pid reused by another program."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or "nats-server" not in proc.name():
            return None
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return proc if any(m in cmdline for m in markers) else None


def stop_orphan(store_dir: Path, markers: list[str], own: int | None = None) -> int | None:
    """Stop a live nats-server recorded on `store_dir` (not `own`); its pid, or None.

    SIGTERM (the store is flushed), then SIGKILL after `STOP_TIMEOUT_S`; waited for, so the
    store is free when this returns."""
    pid, _ = _recorded(store_dir)
    proc = _server_on(pid, markers) if pid != own else None
    if proc is None:
        return None
    log.warning("nats-server %d still runs on %s (an orphan of a crashed `fleet up`); stopping it",
                pid, store_dir)  # fmt: skip
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    return pid


def port_free(host: str, port: int) -> bool:
    """True if `port` can be bound on `host` now. SO_REUSEADDR as nats-server (Go) sets it,
    so a port whose old connections linger in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def previous_port(store_dir: Path, host: str) -> int | None:
    """The client port the last server on `store_dir` used, if it is free now; else None."""
    _, port = _recorded(store_dir)
    if port <= 0 or not port_free(host, port):
        return None
    return port

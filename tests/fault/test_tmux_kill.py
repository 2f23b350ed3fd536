"""kill -9 of the fleet's tmux server: each agent's monitor notices and the agent goes to ERROR
(its session is gone), the health service's recovery ladder rebuilds the session
(recreate_session), and the agents run again. Orphaned pane shells are ended afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil
from nats.aio.client import Client

from infra.eventstore import EventStore
from schemas import events as e
from schemas.recovery import SESSION_GONE
from services.health import HealthService
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until

AGENTS = ("t1", "t2")


def tmux(fleet: Fleet, *args: str) -> str:
    done = subprocess.run(
        ["tmux", "-L", fleet.tmux_socket, *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def end_orphans(pids: list[int]) -> None:
    """Pane shells of the killed server that outlived it (they can spin on a dead pty)."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()


async def test_a_killed_tmux_server_is_noticed_and_the_ladder_rebuilds_sessions(
    fleet: Fleet, nc: Client, repo: Path, health: HealthService
) -> None:
    for name in AGENTS:
        spawned = await spawn(nc, str(repo), name)
        assert spawned["ok"] is True, spawned
    server_pid = int(tmux(fleet, "display-message", "-p", "#{pid}"))
    panes = [int(p) for p in tmux(fleet, "list-panes", "-a", "-F", "#{pane_pid}").split()]
    os.kill(server_pid, signal.SIGKILL)
    try:
        store = EventStore(nc)
        for name in AGENTS:

            async def rebuilt(name: str = name) -> bool:
                log = [s.event for s in await store.read(name) if s.event is not None]
                failed = [
                    x
                    for x in log
                    if isinstance(x, e.LifecycleChanged)
                    and x.to.value == "ERROR"
                    and x.reason.startswith(SESSION_GONE)
                ]
                rungs = [x.rung for x in log if isinstance(x, e.RecoveryEscalated)]
                last = [x for x in log if isinstance(x, e.LifecycleChanged)][-1]
                return bool(failed) and "recreate_session" in rungs and last.to.value == "RUNNING"

            await until(rebuilt, f"agent {name} in ERROR, then rebuilt by the ladder", 60)

            async def running(name: str = name) -> dict | None:
                shown: dict = (await command(nc, name, "show"))["agent"]
                return shown if shown["lifecycle"] == "RUNNING" else None

            shown = await until(running, f"agent {name} RUNNING after the rebuild", 30)
            assert tmux(fleet, "has-session", "-t", shown["tmux"]["session"]) == ""
            sent = await command(nc, name, "send", text="echo rebuilt")
            assert sent["ok"] is True, sent
        sessions = tmux(fleet, "list-sessions", "-F", "#{session_name}").split()
        assert sorted(sessions) == [f"fleet-{a}" for a in AGENTS]
    finally:
        end_orphans(panes)

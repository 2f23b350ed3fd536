"""psutil samples of an agent's process tree, for the health service (blocking: run in a thread).

The tree is every tmux pane process of the agent's session and all their descendants (the
assistant, the shells, the dev services). CPU percent needs two readings of the same process,
so `psutil.Process` objects are kept between samples, keyed by pid and start time (a reused
pid is a new process).
"""

from __future__ import annotations

import contextlib

import psutil

from infra import procs
from infra.tmux import Tmux
from schemas.agent import AgentState
from schemas.errors import FleetError
from schemas.health import Sample

_GONE = (psutil.NoSuchProcess, ProcessLookupError)
MB = 1024 * 1024


class Sampler:
    def __init__(self) -> None:
        self._tmux: dict[str, Tmux] = {}
        self._seen: dict[str, dict[tuple[int, float], psutil.Process]] = {}  # per agent

    def pane_pids(self, state: AgentState) -> list[int]:
        tmux = self._tmux.get(state.tmux_socket)
        if tmux is None:
            tmux = self._tmux[state.tmux_socket] = Tmux(state.tmux_socket)
        try:
            return tmux.pane_pids(state.tmux_session)
        except FleetError:
            return []  # the session is gone; the actor records that

    def forget(self, agent_id: str) -> None:
        self._seen.pop(agent_id, None)

    def measure(self, state: AgentState) -> tuple[Sample, dict[str, bool]] | None:
        """The tree's figures and, per running service, whether its pid is still alive."""
        pids = self.pane_pids(state)
        if not pids:
            return None
        before = self._seen.get(state.agent_id, {})
        seen: dict[tuple[int, float], psutil.Process] = {}
        cpu = rss = 0.0
        threads = fds = 0
        for proc in procs.tree(pids):
            with contextlib.suppress(*_GONE, psutil.AccessDenied):
                key = (proc.pid, proc.create_time())
                proc = before.get(key, proc)
                with proc.oneshot():
                    figures = (
                        proc.cpu_percent(None),  # 0.0 at a process's first reading
                        proc.memory_info().rss,
                        proc.num_threads(),
                        proc.num_fds(),
                    )
                seen[key] = proc  # counted only once every figure was read
                cpu, rss = cpu + figures[0], rss + figures[1]
                threads, fds = threads + figures[2], fds + figures[3]
        self._seen[state.agent_id] = seen
        sample = Sample(
            cpu_percent=round(cpu, 1),
            rss_mb=round(rss / MB, 2),
            threads=threads,
            open_files=fds,
            processes=len(seen),
        )
        alive = {
            name: _alive(svc.pid)
            for name, svc in state.services.items()
            if svc.state == "running" and svc.pid
        }
        return sample, alive


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False

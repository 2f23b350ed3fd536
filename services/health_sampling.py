"""psutil samples of an agent's process tree, for the health service (blocking: run in a thread).

The tree is every tmux pane process of the agent's session and all their descendants (the
assistant, the shells, the dev services). CPU percent needs two readings of the same process,
so `psutil.Process` objects are kept between samples, keyed by pid and start time (a reused
pid is a new process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

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

    def _server(self, socket: str) -> Tmux:
        tmux = self._tmux.get(socket)
        if tmux is None:
            tmux = self._tmux[socket] = Tmux(socket)
        return tmux

    def pane_pids(self, state: AgentState) -> list[int]:
        try:
            return self._server(state.tmux_socket).pane_pids(state.tmux_session)
        except FleetError:
            return []  # the session is gone; the actor records that

    def forget(self, agent_id: str) -> None:
        self._seen.pop(agent_id, None)

    def measure(self, state: AgentState) -> tuple[Sample, dict[str, bool]] | None:
        """One agent's `measure_all`."""
        return self.measure_all([state]).get(state.agent_id)

    def measure_all(
        self, states: Iterable[AgentState]
    ) -> dict[str, tuple[Sample, dict[str, bool]]]:
        """Each agent's tree figures and, per running service, whether its pid is alive.

        The cost of a round is one tmux call per tmux server and one pass over /proc, however
        many agents there are (agents whose session has no live pane are left out)."""
        states = list(states)
        panes: dict[str, dict[str, list[int]]] = {}
        for socket in {s.tmux_socket for s in states}:
            panes[socket] = self._server(socket).pane_pids_by_session()
        forest = procs.Forest()
        found = {}
        for state in states:
            pids = panes[state.tmux_socket].get(state.tmux_session, [])
            if pids:
                found[state.agent_id] = self._figures(state, forest.tree(pids))
        return found

    def _figures(
        self, state: AgentState, tree: list[psutil.Process]
    ) -> tuple[Sample, dict[str, bool]]:
        before = self._seen.get(state.agent_id, {})
        seen: dict[tuple[int, float], psutil.Process] = {}
        cpu = rss = 0.0
        threads = fds = 0
        for proc in tree:
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

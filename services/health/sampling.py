"""Samples of an agent's process tree, for the health service (blocking: run in a thread).

The tree is every tmux pane process of the agent's session and all their descendants (the
assistant, the shells, the dev services). A round makes one tmux call per tmux server and one
pass over /proc (infra/procs.py `Forest`), and takes every figure but the open files from the
stat that pass read: at 200 agents (about 4,000 processes) psutil's four reads per process
and its per-call boot-time and CPU-count lookups took a fifth of a core every 2 s. CPU percent
needs two readings of the same process, so each process's CPU time is kept between rounds,
keyed by pid and start time (a reused pid is a new process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from infra import procs
from infra.tmux import Tmux
from schemas.agent import AgentState
from schemas.errors import FleetError
from schemas.health import Sample

MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")

Key = tuple[int, int]  # (pid, start time in ticks)


class Sampler:
    def __init__(self) -> None:
        self._tmux: dict[str, Tmux] = {}
        self._seen: dict[str, dict[Key, int]] = {}  # per agent: each process's CPU ticks
        self._at: dict[str, float] = {}  # per agent: when that was read

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
        self._at.pop(agent_id, None)

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
                found[state.agent_id] = self._figures(state, forest, forest.family(pids))
        return found

    def _figures(
        self, state: AgentState, forest: procs.Forest, tree: list[int]
    ) -> tuple[Sample, dict[str, bool]]:
        before = self._seen.get(state.agent_id, {})
        at = time.monotonic()
        elapsed = at - self._at.get(state.agent_id, at)
        seen: dict[Key, int] = {}
        used = rss = 0
        threads = fds = 0
        for pid in tree:
            stat = forest.stats[pid]
            key = (pid, stat.start)
            if key in before:  # 0.0 at a process's first reading, as psutil's cpu_percent
                used += max(0, stat.cpu_ticks - before[key])
            seen[key] = stat.cpu_ticks
            rss += stat.rss_pages * PAGE
            threads += stat.threads
            fds += _open_files(pid)
        self._seen[state.agent_id], self._at[state.agent_id] = seen, at
        cpu = used / TICKS / elapsed * 100 if elapsed > 0 else 0.0
        sample = Sample(
            cpu_percent=round(cpu, 1),
            rss_mb=round(rss / MB, 2),
            threads=threads,
            open_files=fds,
            processes=len(seen),
        )
        alive = {
            name: _alive(forest, svc.pid)
            for name, svc in state.services.items()
            if svc.state == "running" and svc.pid
        }
        return sample, alive


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # exited meanwhile, or not ours to read
        return 0


def _alive(forest: procs.Forest, pid: int | None) -> bool:
    stat = forest.stats.get(pid) if pid is not None else None
    return stat is not None and not stat.zombie

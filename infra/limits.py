"""Resource limits per agent: memory, CPU and pids, enforced by the kernel where it lets us.

Three ways, chosen once per process by `detect()` (infra/cgroups.py): cgroup v2, cgroup v1,
or setrlimit on each process plus a psutil watchdog (infra/rlimits.py) where no cgroup is
writable.

A process forked later by a member stays in the cgroup (and inherits its rlimits), but tmux
starts new panes from its server, so `adopt` is called on every watchdog tick to move the
agent's current tree in. Going over a limit is reported by `check` as `Exceeded`; what follows
(warn, restart, stop) is the caller's policy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from infra import cgroups, procs, rlimits
from infra.cgroups import MB, Support, detect
from schemas.subjects import token
from schemas.templates import Resources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exceeded:
    resource: str  # memory_mb | cpu | pids | lifetime_s
    limit: float
    value: float
    enforced_by: str


@dataclass
class _Agent:
    resources: Resources
    started: float
    counters: dict[str, int] = field(default_factory=dict)
    over: set[str] = field(default_factory=set)  # watchdog: resources over their limit now
    cpu_times: tuple[float, float] | None = None  # (wall, cpu seconds) at the last sample


class Limits:
    """The limits of every agent of this process; thread-safe enough for one caller at a time."""

    def __init__(self, root: str = "fleetd", backend: str | None = None) -> None:
        """`backend="rlimit"` skips cgroups even where they work (for tests and odd hosts)."""
        self.root = token(root, "cgroup name")
        if backend == "rlimit":
            self.support = Support("rlimit", "setrlimit and the psutil watchdog, as asked")
        else:
            self.support = detect(self.root)
        self.agents: dict[str, _Agent] = {}

    @property
    def backend(self) -> str:
        return self.support.backend

    def groups(self, agent_id: str) -> dict[str, Path]:
        """The agent's cgroup directory per controller (empty with rlimit)."""
        return {c: parent / token(agent_id) for c, parent in self.support.dirs.items()}

    # -- applying ---------------------------------------------------------------------------

    def apply(self, agent_id: str, pids: Iterable[int], resources: Resources) -> str:
        """Limit the agent's processes (the pids' whole trees); returns the backend used.

        Nothing happens for a template without memory, cpu or pids limits (a lifetime is
        only watched).
        """
        self.agents[agent_id] = _Agent(resources, time.monotonic())
        if resources.memory_mb is None and resources.cpu is None and resources.pids is None:
            return "none"
        if self.backend != "rlimit":
            for controller, path in self.groups(agent_id).items():
                path.mkdir(exist_ok=True)
                cgroups.write_limits(controller, path, resources)
            # A cgroup kept from an earlier incarnation keeps its counts: start from them.
            self._counters(agent_id, self.agents[agent_id])
        self.adopt(agent_id, pids)
        return self.backend

    def adopt(self, agent_id: str, pids: Iterable[int]) -> list[int]:
        """Bring the pids' trees under the agent's limits (new panes, new services)."""
        agent = self.agents.get(agent_id)
        if agent is None:
            return []
        tree = procs.tree(pids)
        if self.backend == "rlimit":
            return [p.pid for p in tree if rlimits.set_rlimits(p, agent.resources)]
        moved = []
        for path in self.groups(agent_id).values():
            if not path.is_dir():
                continue
            inside = set(cgroups.pids_in(path))
            for proc in tree:
                if proc.pid not in inside:
                    with contextlib.suppress(OSError):  # exited meanwhile
                        cgroups.write(path / "cgroup.procs", str(proc.pid))
                        moved.append(proc.pid)
        return moved

    # -- watching ---------------------------------------------------------------------------

    def check(self, agent_id: str, pids: Iterable[int]) -> list[Exceeded]:
        """What went over a limit since the last check (each episode reported once)."""
        agent = self.agents.get(agent_id)
        if agent is None:
            return []
        r, found = agent.resources, []
        lifetime = time.monotonic() - agent.started
        if (
            r.max_lifetime_s is not None
            and lifetime > r.max_lifetime_s
            and _first(agent, "lifetime_s")
        ):
            found.append(Exceeded("lifetime_s", r.max_lifetime_s, lifetime, "watchdog"))
        if self.backend == "rlimit":
            return found + self._watch(agent, list(pids))
        return found + self._counters(agent_id, agent)

    def _counters(self, agent_id: str, agent: _Agent) -> list[Exceeded]:
        """cgroup event counters that grew: an OOM kill, a refused fork."""
        r, found, groups = agent.resources, [], self.groups(agent_id)
        v2 = self.backend == "cgroup-v2"
        mem = groups.get("" if v2 else "memory")
        pids = groups.get("" if v2 else "pids")
        if r.memory_mb is not None and mem is not None:
            stats = cgroups.keyed(mem / ("memory.events" if v2 else "memory.oom_control"))
            if self._grew(agent, "memory_mb", stats.get("oom_kill", 0)):
                peak = cgroups.read_int(
                    mem / ("memory.peak" if v2 else "memory.max_usage_in_bytes")
                )
                found.append(Exceeded("memory_mb", r.memory_mb, peak / MB, self.backend))
        if r.pids is not None and pids is not None:
            refused = cgroups.keyed(pids / "pids.events").get("max", 0)
            if self._grew(agent, "pids", refused):
                found.append(
                    Exceeded("pids", r.pids, cgroups.read_int(pids / "pids.current"), self.backend)
                )
        return found

    @staticmethod
    def _grew(agent: _Agent, name: str, value: int) -> bool:
        before = agent.counters.get(name, 0)
        agent.counters[name] = value
        return value > before

    def _watch(self, agent: _Agent, pids: list[int]) -> list[Exceeded]:
        """The psutil watchdog: RSS and process count of the tree, CPU since the last tick."""
        r, found = agent.resources, []
        tree = procs.tree(pids)
        rss = sum(rlimits.rss(p) for p in tree) / MB
        now, cpu = time.monotonic(), sum(rlimits.cpu_seconds(p) for p in tree)
        cores = None
        if agent.cpu_times is not None and now > agent.cpu_times[0]:
            cores = max(0.0, cpu - agent.cpu_times[1]) / (now - agent.cpu_times[0])
        agent.cpu_times = (now, cpu)
        samples: dict[str, tuple[float | None, float]] = {
            "memory_mb": (r.memory_mb, rss),
            "pids": (r.pids, float(len(tree))),
            "cpu": (r.cpu, cores or 0.0),
        }
        for name, (limit, value) in samples.items():
            if limit is None or value <= limit:
                agent.over.discard(name)
            elif name not in agent.over:
                agent.over.add(name)
                found.append(Exceeded(name, float(limit), value, "watchdog"))
        return found

    def members(self, agent_id: str) -> list[int]:
        """Every process in the agent's cgroups, orphans that left its tree included."""
        found: set[int] = set()
        for path in self.groups(agent_id).values():
            found.update(cgroups.pids_in(path))
        return sorted(found)

    def release(self, agent_id: str, *, kill: bool = True, timeout: float = 2.0) -> None:
        """Forget the agent and remove its cgroups; with `kill`, SIGKILL what is left in them
        first (a child orphaned by its dying shell leaves the tree, never the cgroup)."""
        self.agents.pop(agent_id, None)
        left = self.members(agent_id)
        if kill and left:
            procs.terminate_tree(left, 0.0, timeout)
        deadline = time.monotonic() + timeout
        for path in self.groups(agent_id).values():
            while path.is_dir():
                try:
                    path.rmdir()
                except OSError:  # EBUSY while the killed tasks are being reaped
                    if time.monotonic() > deadline:
                        log.warning("cgroup %s kept: processes %s", path, cgroups.pids_in(path))
                        break
                    time.sleep(0.01)

    def close(self) -> None:
        """Release every agent and remove the `<root>` parents if nothing else is in them."""
        for agent_id in list(self.agents):
            self.release(agent_id)
        for parent in self.support.dirs.values():
            with contextlib.suppress(OSError):
                parent.rmdir()


def _first(agent: _Agent, name: str) -> bool:
    if name in agent.over:
        return False
    agent.over.add(name)
    return True


@functools.cache
def default() -> Limits:
    """The process-wide `Limits` (detection runs once)."""
    limits = Limits()
    log.info("resource limits: %s", limits.support.why)
    return limits


def apply(agent_id: str, pids: Iterable[int], resources: Resources) -> str:
    """Limit an agent's session processes with the process-wide `Limits`; the backend used."""
    return default().apply(agent_id, pids, resources)

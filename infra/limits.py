"""Resource limits per agent: memory, CPU and pids, enforced by the kernel where it lets us.

Three ways, chosen once per process by `detect()`:

- cgroup-v2: a `fleetd/<agent>` child of our own cgroup on the unified hierarchy, which needs
  the memory, pids and cpu controllers enabled in our cgroup's `cgroup.subtree_control` (or
  enable-able: the "no internal processes" rule forbids it in a cgroup that holds processes,
  unless it is the root). Files: memory.max, pids.max, cpu.max ("quota period");
  memory.events `oom_kill` and pids.events `max` count what the kernel refused.
- cgroup-v1: the same child under each controller's own hierarchy (hybrid hosts mount
  memory, pids and cpu separately; our place in each comes from /proc/self/cgroup). Files:
  memory.limit_in_bytes (+ memory.memsw.limit_in_bytes where swap accounting exists),
  pids.max, cpu.cfs_quota_us / cpu.cfs_period_us; memory.oom_control `oom_kill`, pids.events.
- rlimit: setrlimit on each process (RLIMIT_AS for memory, RLIMIT_NPROC for pids, which
  is per user and not enforced for root) plus the watchdog, which sums the tree's RSS.

A process forked later by a member stays in the cgroup (and inherits its rlimits), but tmux
starts new panes from its server, so `adopt` is called on every watchdog tick to move the
agent's current tree in. Going over a limit is reported by `check` as `Exceeded`; what follows
(warn, restart, stop) is the caller's policy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource as rlimits
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infra import procs
from schemas.subjects import token
from schemas.templates import Resources

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
MB = 1024 * 1024
_GONE = (psutil.NoSuchProcess, ProcessLookupError)


@dataclass(frozen=True)
class Support:
    """How this host lets fleetd limit agents, and why (a sentence for `fleet doctor`)."""

    backend: str  # cgroup-v2 | cgroup-v1 | rlimit
    why: str
    dirs: dict[str, Path] = field(default_factory=dict)  # controller ("" for v2) -> parent dir


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


def _mounts() -> list[tuple[str, str, set[str]]]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                found.append((parts[1], parts[2], set(parts[3].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller -> our path in its hierarchy ("" names the v2 unified one)."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                own[name] = path
    return own


def _writable_child(parent: Path, name: str) -> bool:
    """Can we make (and remove) cgroups under `parent`? Checked by doing it."""
    probe = parent / f"{name}-probe-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def detect(root: str = "fleetd") -> Support:
    """Pick the strongest way this host allows; the `why` says what was found."""
    own, mounts = _own_cgroups(), _mounts()
    notes: list[str] = []
    for point, kind, _ in mounts:
        if kind != "cgroup2" or "" not in own:
            continue
        here = Path(point) / own[""].lstrip("/")
        try:
            enabled = set((here / "cgroup.subtree_control").read_text().split())
            available = set((here / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            notes.append(f"cgroup v2 at {point} lacks controller(s) {', '.join(missing)}")
            continue
        if not set(CONTROLLERS) <= enabled and not _enable(here):
            notes.append(f"cgroup v2 at {here}: cannot delegate controllers (it holds processes)")
            continue
        if _writable_child(here / root, "v2"):
            why = f"cgroup v2: agents get {here / root}/<agent> with memory, pids and cpu"
            return Support("cgroup-v2", why, {"": here / root})
        notes.append(f"cgroup v2 at {here} is not writable by us")
    dirs: dict[str, Path] = {}
    for controller in CONTROLLERS:
        for point, kind, options in mounts:
            if kind == "cgroup" and controller in options and controller in own:
                parent = Path(point) / own[controller].lstrip("/") / root
                if _writable_child(parent, "v1"):
                    dirs[controller] = parent
                else:
                    notes.append(f"cgroup v1 {controller} at {parent.parent} is not writable")
                break
    if "memory" in dirs:
        names = ", ".join(dirs)
        return Support("cgroup-v1", f"cgroup v1 ({names}): agents get {root}/<agent> in each", dirs)
    notes.append("no writable memory cgroup")
    why = "; ".join(notes) + "; falling back to setrlimit on each process and a psutil watchdog"
    return Support("rlimit", why)


def _enable(here: Path) -> bool:
    try:
        (here / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        return True
    except OSError:
        return False


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
                self._write_limits(controller, path, resources)
            # A cgroup kept from an earlier incarnation keeps its counts: start from them.
            self._counters(agent_id, self.agents[agent_id])
        self.adopt(agent_id, pids)
        return self.backend

    def _write_limits(self, controller: str, path: Path, r: Resources) -> None:
        v2 = controller == ""
        if r.memory_mb is not None and controller in ("", "memory"):
            limit = str(r.memory_mb * MB)
            if v2:
                _write(path / "memory.max", limit)
                _write(path / "memory.swap.max", "0", optional=True)
            else:
                _write(path / "memory.limit_in_bytes", limit)
                _write(path / "memory.memsw.limit_in_bytes", limit, optional=True)
        if r.pids is not None and controller in ("", "pids"):
            _write(path / "pids.max", str(r.pids))
        if r.cpu is not None and controller in ("", "cpu"):
            quota = max(1000, int(r.cpu * CPU_PERIOD_US))
            if v2:
                _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(path / "cpu.cfs_quota_us", str(quota))

    def adopt(self, agent_id: str, pids: Iterable[int]) -> list[int]:
        """Bring the pids' trees under the agent's limits (new panes, new services)."""
        agent = self.agents.get(agent_id)
        if agent is None:
            return []
        tree = procs.tree(pids)
        if self.backend == "rlimit":
            return [p.pid for p in tree if _set_rlimits(p, agent.resources)]
        moved = []
        for path in self.groups(agent_id).values():
            if not path.is_dir():
                continue
            inside = set(_pids_in(path))
            for proc in tree:
                if proc.pid not in inside:
                    with contextlib.suppress(OSError):  # exited meanwhile
                        _write(path / "cgroup.procs", str(proc.pid))
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
        if r.max_lifetime_s is not None and lifetime > r.max_lifetime_s:
            if _first(agent, "lifetime_s"):
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
            stats = _keyed(mem / ("memory.events" if v2 else "memory.oom_control"))
            if self._grew(agent, "memory_mb", stats.get("oom_kill", 0)):
                peak = _int(mem / ("memory.peak" if v2 else "memory.max_usage_in_bytes"))
                found.append(Exceeded("memory_mb", r.memory_mb, peak / MB, self.backend))
        if r.pids is not None and pids is not None:
            refused = _keyed(pids / "pids.events").get("max", 0)
            if self._grew(agent, "pids", refused):
                found.append(Exceeded("pids", r.pids, _int(pids / "pids.current"), self.backend))
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
        rss = sum(_rss(p) for p in tree) / MB
        now, cpu = time.monotonic(), sum(_cpu(p) for p in tree)
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
            found.update(_pids_in(path))
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
                        log.warning("cgroup %s kept: processes %s", path, _pids_in(path))
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


def _set_rlimits(proc: psutil.Process, r: Resources) -> bool:
    try:
        if r.memory_mb is not None:
            proc.rlimit(rlimits.RLIMIT_AS, (r.memory_mb * MB, r.memory_mb * MB))
        if r.pids is not None:
            proc.rlimit(rlimits.RLIMIT_NPROC, (r.pids, r.pids))
        return True
    except (*_GONE, psutil.AccessDenied, ValueError):
        return False


def _write(path: Path, value: str, optional: bool = False) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        if not optional:
            raise
    except OSError:
        if not optional:
            raise
        log.debug("optional cgroup setting %s=%s refused", path, value)


def _pids_in(path: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    return []


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("oom_kill 3") as a dict; missing or unreadable: empty."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                found[key] = int(value)
    return found


def _int(path: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return 0


def _rss(proc: psutil.Process) -> int:
    with contextlib.suppress(*_GONE, psutil.AccessDenied):
        return int(proc.memory_info().rss)
    return 0


def _cpu(proc: psutil.Process) -> float:
    with contextlib.suppress(*_GONE, psutil.AccessDenied):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return 0.0


_default: Limits | None = None


def default() -> Limits:
    """The process-wide `Limits` (detection runs once)."""
    global _default
    if _default is None:
        _default = Limits()
        log.info("resource limits: %s", _default.support.why)
    return _default


def apply(agent_id: str, pids: Iterable[int], resources: Resources) -> str:
    """Limit an agent's session processes with the process-wide `Limits`; the backend used."""
    return default().apply(agent_id, pids, resources)

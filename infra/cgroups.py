"""The cgroup backend of resource limits: what this host allows, and the files that enforce it.

`detect()` picks the strongest way this host allows, once per process:

- cgroup-v2: a `fleetd/<agent>` child of our own cgroup on the unified hierarchy, which needs
  the memory, pids and cpu controllers enabled in our cgroup's `cgroup.subtree_control` (or
  enable-able: the "no internal processes" rule forbids it in a cgroup that holds processes,
  unless it is the root). Files: memory.max, pids.max, cpu.max ("quota period");
  memory.events `oom_kill` and pids.events `max` count what the kernel refused.
- cgroup-v1: the same child under each controller's own hierarchy (hybrid hosts mount
  memory, pids and cpu separately; our place in each comes from /proc/self/cgroup). Files:
  memory.limit_in_bytes (+ memory.memsw.limit_in_bytes where swap accounting exists),
  pids.max, cpu.cfs_quota_us / cpu.cfs_period_us; memory.oom_control `oom_kill`, pids.events.
- rlimit, when neither is writable: setrlimit on each process plus the psutil watchdog
  (infra/rlimits.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.templates import Resources

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Support:
    """How this host lets fleetd limit agents, and why (a sentence for `fleet doctor`)."""

    backend: str  # cgroup-v2 | cgroup-v1 | rlimit
    why: str
    dirs: dict[str, Path] = field(default_factory=dict)  # controller ("" for v2) -> parent dir


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


def write_limits(controller: str, path: Path, r: Resources) -> None:
    """Write the agent's limits into its cgroup `path` of `controller` ("" for v2)."""
    v2 = controller == ""
    if r.memory_mb is not None and controller in ("", "memory"):
        limit = str(r.memory_mb * MB)
        if v2:
            write(path / "memory.max", limit)
            write(path / "memory.swap.max", "0", optional=True)
        else:
            write(path / "memory.limit_in_bytes", limit)
            write(path / "memory.memsw.limit_in_bytes", limit, optional=True)
    if r.pids is not None and controller in ("", "pids"):
        write(path / "pids.max", str(r.pids))
    if r.cpu is not None and controller in ("", "cpu"):
        quota = max(1000, int(r.cpu * CPU_PERIOD_US))
        if v2:
            write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        else:
            write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            write(path / "cpu.cfs_quota_us", str(quota))


def write(path: Path, value: str, optional: bool = False) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        if not optional:
            raise
    except OSError:
        if not optional:
            raise
        log.debug("optional cgroup setting %s=%s refused", path, value)


def pids_in(path: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    return []


def keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("oom_kill 3") as a dict; missing or unreadable: empty."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                found[key] = int(value)
    return found


def read_int(path: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return 0

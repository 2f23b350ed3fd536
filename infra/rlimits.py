"""The rlimit backend of resource limits, for hosts without a writable cgroup: setrlimit on each
process, and the psutil samples the watchdog in infra/limits.py compares with the limits.

RLIMIT_AS bounds memory and RLIMIT_NPROC pids (per user, and not enforced for root); the
watchdog sums the tree's RSS, counts its processes and measures its CPU between ticks.
"""

from __future__ import annotations

import contextlib
import resource

import psutil

from infra.cgroups import MB
from schemas.templates import Resources

_GONE = (psutil.NoSuchProcess, ProcessLookupError)


def set_rlimits(proc: psutil.Process, r: Resources) -> bool:
    try:
        if r.memory_mb is not None:
            proc.rlimit(resource.RLIMIT_AS, (r.memory_mb * MB, r.memory_mb * MB))
        if r.pids is not None:
            proc.rlimit(resource.RLIMIT_NPROC, (r.pids, r.pids))
        return True
    except (*_GONE, psutil.AccessDenied, ValueError):
        return False


def rss(proc: psutil.Process) -> int:
    with contextlib.suppress(*_GONE, psutil.AccessDenied):
        return int(proc.memory_info().rss)
    return 0


def cpu_seconds(proc: psutil.Process) -> float:
    with contextlib.suppress(*_GONE, psutil.AccessDenied):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return 0.0

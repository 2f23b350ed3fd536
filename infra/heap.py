"""Giving the C heap's free pages back to the kernel, for processes that stay up for days.

An agent actor allocates most of what it ever will while it starts (imports, its log's fold, a
spawn's git and tmux work) and then waits. glibc keeps the pages it freed meanwhile, in one
arena per thread that ever allocated (two dozen threads in a Ray worker), so they stay in the
process's private memory. `trim()` after the start hands them back; fleetd's Ray also caps
the arenas at two (`MALLOC_ARENA_MAX`, infra/raycluster.py). Together: 46.2 MB -> 45.3 MB of
USS for a Ray actor that imports what an agent does (8 actors, 2026-12-07).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim() -> bool:
    """Return freed heap pages to the kernel (glibc's malloc_trim); False where there is none
    (musl, macOS)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))

"""Giving a process's freed heap back to the system, after a burst of work.

glibc keeps the memory a process frees for its next allocations, so the burst of a start or a
spawn (importing the actor's modules, its log's fold, subprocess pipes, replies) leaves pages
resident that an idle agent never touches again, in one arena per thread that allocated (two
dozen threads in a Ray worker). `give_back()` returns every whole free page (malloc_trim);
fleetd's Ray also caps the arenas at two (`MALLOC_ARENA_MAX`, infra/raycluster.py). Together:
46.2 -> 45.3 MB of USS for a Ray actor that imports what an agent does (8 actors, 2026-12-07).
Where the C library has no `malloc_trim` (musl), nothing is done.
"""

from __future__ import annotations

import ctypes


def give_back() -> bool:
    """Return the heap's free pages to the system (a millisecond or so; nothing moves);
    False where the C library cannot."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(0))

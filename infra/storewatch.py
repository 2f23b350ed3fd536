"""Watch the free space under the embedded nats-server's store; bounce the server once space
returns after the disk filled up.

Protocol fact (nats-server 2.10 to 2.15, seen in tests/fault/test_full_disk.py): when a
write to a stream's message block fails with ENOSPC, the server logs "critical write error"
and keeps that error on the block, so every later publish to the stream goes unacknowledged
even after space is freed, until the server restarts and recovers its store (a torn last
record is truncated; acknowledged ones are kept). So the watcher notes when the file system
runs out and, once it has room again, stops the server with SIGTERM; `natsserver.supervise`
(which `fleet up` runs next to this) starts it again on the same store and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LOW_BYTES = 1 << 20  # under 1 MiB free, the store's file system counts as full
PERIOD_S = 1.0


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on `path`'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def watch_space(
    store_dir: Path,
    server_pid: Callable[[], int],
    *,
    period_s: float = PERIOD_S,
    low_bytes: int = LOW_BYTES,
) -> None:
    """Until cancelled: after the store's disk was full and has room again, SIGTERM the
    server (`server_pid()` names the current process) so its supervisor restarts it."""
    full = False
    while True:
        free = await asyncio.to_thread(free_bytes, store_dir)
        if free < low_bytes and not full:
            full = True
            log.error("the disk under %s is full (%d bytes free): appends fail", store_dir, free)
        elif free >= low_bytes and full:
            full = False
            pid = server_pid()
            log.warning("space is back under %s; restarting nats-server %d", store_dir, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(period_s)

"""Waiting for any process to exit without polling: a pidfd in the event loop.

`os.pidfd_open` (Linux 5.3+) works for processes that are not our children (a tmux pane's
shell is tmux's child); the descriptor becomes readable the moment the process exits, reaped
or not. The exit status is not ours to collect: callers learn it another way.
"""

from __future__ import annotations

import asyncio
import os


async def wait_exit(pid: int, timeout: float | None = None) -> bool:
    """Until `pid` exits (True) or `timeout` passes (False). A pid already gone is True."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(gone, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)

"""A local aiohttp server for the outside world a test talks to (a webhook, a push service, the
HTTP endpoint a probe checks): the only kind of stand-in the tests use."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """`app` on a free port of 127.0.0.1 until the block ends: that port."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)  # a handler a test left hanging is cut
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()

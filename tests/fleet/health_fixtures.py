"""The real health service in a test's own event loop, as `fleet up` runs it, with short periods."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.aio.client import Client

from services.health import HealthConfig, HealthService

FAST = HealthConfig(sample_period_s=0.3, tick_s=0.1, exit_grace_s=0.2)


@contextlib.asynccontextmanager
async def running_health(nc: Client, config: HealthConfig = FAST) -> AsyncIterator[HealthService]:
    """The health service running on `nc` until the block ends; then stopped and awaited."""
    service = HealthService(nc, config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

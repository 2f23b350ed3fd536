"""Talking to a test fleet the way any NATS client would: JSON requests, JSON replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client

from schemas import subjects


async def request(
    nc: Client, subject: str, payload: dict[str, Any] | bytes, timeout: float = 60
) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    msg = await nc.request(subject, data, timeout=timeout)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


async def command(
    nc: Client, agent_id: str, type_: str, timeout: float = 60, **fields: Any
) -> dict[str, Any]:
    return await request(nc, subjects.command(agent_id), {"type": type_, **fields}, timeout)


async def spawn(nc: Client, repo: str, name: str, **fields: Any) -> dict[str, Any]:
    reply = await request(
        nc, subjects.control("spawn"), {"repo": repo, "name": name, **fields}, 120
    )
    return reply


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")

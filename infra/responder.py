"""Answering requests on a NATS subject: one task per request, one reply for every outcome.

The handler's reply, or what the one error boundary (infra/errorlog.py `reply_to`) makes of its
exception: a `FleetError` is answered with its sentence; anything else is a bug, logged with an
id that the reply carries, so a caller never meets silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from infra import errorlog

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[bytes]]


async def answer(msg: Msg, handler: Handler, what: str) -> None:
    try:
        reply = await handler(msg.data)
    except Exception as exc:  # noqa: BLE001 (the one error boundary: every outcome is a reply)
        reply = errorlog.reply_to(exc, log, f"{what}: a request")
    if msg.reply:
        await msg.respond(reply)


async def serve(nc: Client, subject: str, handler: Handler, what: str) -> Subscription:
    """Subscribe `handler` to `subject` (a queue group, so several instances share the load)."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_msg(msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(answer(msg, handler, what))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sub = await nc.subscribe(subject, queue=what, cb=on_msg)
    await nc.flush()
    return sub

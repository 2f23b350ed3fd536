"""Following the events stream, for services: a durable consumer, so a service that restarts
goes on where it stopped, and one odd event or failing handler never stops the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from infra.eventscan import Stored, decode
from schemas import subjects

log = logging.getLogger(__name__)


class Following:
    """`follow`, for `EventStore`: needs only its JetStream context."""

    js: JetStreamContext

    async def follow(
        self,
        durable: str,
        handler: Callable[[Stored], Awaitable[None]],
        *,
        stop: asyncio.Event,
        filter_subject: str = subjects.ALL_EVENTS,
        max_deliver: int = 5,
    ) -> None:
        """Feed every event to `handler` through a durable consumer, until `stop` is set.

        Acked after the handler returns; an unreadable event is logged and terminated; a
        failing handler's event is redelivered with a growing delay, at most `max_deliver` times.
        """
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=max_deliver,
            ack_wait=30,
        )
        psub = await self.js.pull_subscribe(
            filter_subject,
            stream=subjects.EVENTS_STREAM,  # no stream lookup (see infra/eventscan.py)
            durable=subjects.token(durable, "durable name"),
            config=config,
        )
        try:
            while not stop.is_set():
                try:
                    msgs = await psub.fetch(100, timeout=0.5)
                except TimeoutError:
                    continue  # nats-py raises on an empty fetch
                for msg in msgs:
                    await _deliver(msg, handler)
        finally:
            await psub.unsubscribe()


async def _deliver(msg: Msg, handler: Callable[[Stored], Awaitable[None]]) -> None:
    meta = msg.metadata
    stored = decode(meta.sequence.stream, msg.data)
    if stored.event is None:
        await msg.term()
        return
    try:
        await handler(stored)
    except Exception:
        delay = min(30.0, 0.5 * 2 ** (meta.num_delivered - 1))
        log.exception("handler failed on sequence %d; redelivery in %.1f s", stored.seq, delay)
        await msg.nak(delay=delay)
        return
    await msg.ack()

"""Following the events stream, for services: a durable consumer, so a service that restarts
goes on where it stopped, and one odd event or failing handler never stops the rest.

Live readers read the stream, never a core subscription on `fleet.evt.>`: a core subscriber
sees every publish on the subject, also one that JetStream refused and never stored (a stale
or forged append). With the fleet key each event is checked first (`LiveCheck`: its Fleet-Mac
and its place in the agent's chain, schemas/eventcheck.py); one that fails is refused: logged
with the agent, sequence and why, counted, handed to `on_refused`, and never to the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from infra.eventscan import EventReader, Stored, decode, report_refused
from schemas import subjects
from schemas.audit import MAC_HEADER
from schemas.errors import FleetError
from schemas.eventcheck import ChainCheck, Refusal

log = logging.getLogger(__name__)

SUBSCRIBE_RETRY_S = 0.5  # first wait before asking JetStream for a follower's consumer again
SUBSCRIBE_RETRY_MAX_S = 5.0

OnRefused = Callable[[Refusal], Awaitable[None]]


class LiveCheck:
    """Checks the events one reader of the stream is handed, agent by agent, in stream order.

    The first event of an agent takes up the chain where the log stands before it
    (`chain_end`: a verified snapshot and the tail after it), unless the reader reads the
    stream from its first message (`from_start`), where nothing of the agent comes before.
    Without the fleet key (`reader.macs` None) nothing is checked, as `EventReader` does.
    """

    def __init__(
        self,
        reader: EventReader,
        name: str,
        *,
        from_start: bool = False,
        on_refused: OnRefused | None = None,
    ) -> None:
        self.reader, self.name = reader, name
        self.from_start = from_start
        self.on_refused = on_refused
        self.refused = 0  # events refused so far
        self._checks: dict[str, ChainCheck] = {}

    async def passes(self, agent_id: str, seq: int, raw: bytes, mac: str) -> bool:
        macs = self.reader.macs
        if macs is None:
            return True
        check = self._checks.get(agent_id)
        if check is None:
            anchor = None if self.from_start else await self.reader.chain_end(agent_id, seq - 1)
            check = self._checks[agent_id] = ChainCheck(agent_id, macs, anchor)
        problem = check.check(seq, raw, mac)
        if problem is None:
            return True
        await self.refuse(check.refusal(seq, problem))
        return False

    async def passes_msg(self, msg: Msg) -> bool:
        """`passes` for a message read from the stream (a consumer's, with its metadata)."""
        seq = msg.metadata.sequence.stream
        try:
            agent_id = subjects.agent_from_events(msg.subject)
        except FleetError:
            await self.refuse(Refusal(msg.subject, seq, "its subject names no agent"))
            return False
        mac = msg.headers.get(MAC_HEADER, "") if msg.headers else ""
        return await self.passes(agent_id, seq, msg.data, mac)

    async def refuse(self, refusal: Refusal) -> None:
        self.refused += 1
        report_refused(refusal, self.name)
        if self.on_refused is not None:
            try:
                await self.on_refused(refusal)
            except Exception:
                log.exception("%s: reporting a refused event failed", self.name)


async def read_stream(
    js: JetStreamContext,
    cb: Callable[[Msg], Awaitable[None]],
    *,
    from_start: bool,
    filter_subject: str = subjects.ALL_EVENTS,
) -> Subscription:
    """An ordered consumer on the events stream: only what was stored, in order, with each
    message's stream sequence; from the first message, or from what is stored next."""
    return await js.subscribe(
        filter_subject,
        stream=subjects.EVENTS_STREAM,  # no stream lookup (see infra/eventscan.py)
        ordered_consumer=True,
        cb=cb,
        deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )


class Following(EventReader):
    """`follow`, for `EventStore`."""

    async def follow(
        self,
        durable: str,
        handler: Callable[[Stored], Awaitable[None]],
        *,
        stop: asyncio.Event,
        filter_subject: str = subjects.ALL_EVENTS,
        max_deliver: int = 5,
        on_refused: OnRefused | None = None,
    ) -> None:
        """Feed every event to `handler` through a durable consumer, until `stop` is set.

        Acked after the handler returns; an unreadable event is logged and terminated, and so
        is one that does not verify (refused: `LiveCheck`); a failing handler's event is
        redelivered with a growing delay, at most `max_deliver` times.
        """
        live = LiveCheck(self, f"follower {durable}", on_refused=on_refused)
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=max_deliver,
            ack_wait=30,
        )
        psub = await self._consumer(filter_subject, durable, config, stop)
        if psub is None:
            return
        try:
            while not stop.is_set():
                try:
                    msgs = await psub.fetch(100, timeout=0.5)
                except TimeoutError:
                    continue  # nats-py raises on an empty fetch
                for msg in msgs:
                    await _deliver(msg, handler, live)
        finally:
            await psub.unsubscribe()

    async def _consumer(
        self, filter_subject: str, durable: str, config: ConsumerConfig, stop: asyncio.Event
    ) -> JetStreamContext.PullSubscription | None:
        """The durable pull consumer, asked for again until JetStream answers or `stop` is set
        (None): a follower started while NATS restarts (fleet up brings it back) waits for it
        instead of dying of its first API timeout."""
        name = subjects.token(durable, "durable name")
        delay = SUBSCRIBE_RETRY_S
        while True:
            try:
                return await self.js.pull_subscribe(
                    filter_subject,
                    stream=subjects.EVENTS_STREAM,  # no stream lookup (see infra/eventscan.py)
                    durable=name,
                    config=config,
                )
            except (TimeoutError, NatsError) as e:
                log.warning(
                    "follower %s: JetStream did not answer for its consumer (%s); asking again"
                    " in %.1f s",
                    durable, type(e).__name__, delay,
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return None
            delay = min(delay * 2, SUBSCRIBE_RETRY_MAX_S)


async def _deliver(msg: Msg, handler: Callable[[Stored], Awaitable[None]], live: LiveCheck) -> None:
    meta = msg.metadata
    try:
        passed = await live.passes_msg(msg)
    except Exception:  # the chain could not be read (NATS restarting): ask again later
        log.exception("%s: sequence %d not checked yet", live.name, meta.sequence.stream)
        await msg.nak(delay=1.0)
        return
    if not passed:
        await msg.term()
        return
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

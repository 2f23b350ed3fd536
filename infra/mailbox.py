"""Mail on JetStream: send, read in priority order, ack, request/response, broadcast, topics.

Protocol facts this module relies on:
- `FLEET_MAIL` is a work queue: an acked message is deleted. Each (agent, priority) has one
  durable pull consumer filtered on `fleet.mail.<agent>.<priority>`; filters never overlap,
  which a work-queue stream requires.
- A pull is a request to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with
  `{"batch": n, "no_wait": true}`: the server sends what it has now (up to n), then a status
  message (404 No Messages, 408, 409) if it had fewer. nats-py's `fetch` waits out its timeout
  on an empty consumer, so the pull is spoken here: one round trip per priority, even empty.
- An unacked message comes back after the consumer's `backoff` delays; after `max_deliver`
  deliveries the server publishes `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<c>`,
  which `DeadLetters` turns into a copy on `fleet.deadmail.<agent>.<priority>`, a deletion
  and a warning on `fleet.notify.warning`.
- Header `Nats-TTL: <n>s` (stream `allow_msg_ttl`, nats-server 2.11+) makes the server drop
  the message after n seconds; a reader also drops one whose `sent_at + ttl_s` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from infra import registry
from schemas import mail as m
from schemas import subjects
from schemas.discovery import has
from schemas.errors import FleetError, MailTimeout, StoreUnavailable
from schemas.ratelimit import RateLimiter

log = logging.getLogger(__name__)

CONSUMER_EXISTS = 10148  # JetStream API error: consumer already exists with another config
PULL_TIMEOUT_S = 5.0
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class MailPolicy:
    """Redelivery and limits. `backoff_s[i]` is the wait before redelivery i+1; the server
    needs `max_deliver > len(backoff_s)`."""

    backoff_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    max_deliver: int = 5
    max_ack_pending: int = 20_000
    send_rate: float = 2_000.0  # messages/s per sender, after a burst of `send_burst`
    send_burst: float = 20_000.0


@dataclass(slots=True)
class Delivery:
    """A message handed to a reader: `ack()` when done, else it comes back after a backoff."""

    item: m.InboxItem
    msg: Msg

    async def ack(self) -> None:
        await self.msg.ack()


@dataclass
class Mailbox:
    nc: Client
    policy: MailPolicy = field(default_factory=MailPolicy)

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        self.limiter = RateLimiter(self.policy.send_rate, self.policy.send_burst, "mail messages")
        # consumer name -> (its inbox, the subscription on it, the lock of its pulls). JetStream
        # delivers a pulled message with its own subject, so a shared inbox could not route it.
        self._pulls: dict[str, tuple[str, Subscription, asyncio.Lock]] = {}
        self._doorbells: dict[str, tuple[Subscription, asyncio.Event]] = {}

    # -- sending -----------------------------------------------------------------------------

    def _prepare(
        self, to: str, message: m.MailMessage, priority: str
    ) -> tuple[str, bytes, dict[str, str]]:
        subject = subjects.mail(to, priority)
        m.check(message)
        self.limiter.check(message.from_, time.monotonic())
        message = msgspec.structs.replace(
            message,
            id=message.id or uuid.uuid4().hex,
            sent_at=message.sent_at or datetime.now(UTC),
        )
        headers = {"Nats-Msg-Id": message.id}
        if message.ttl_s > 0:
            headers["Nats-TTL"] = f"{max(1, math.ceil(message.ttl_s))}s"
        return subject, _encode(message), headers

    async def send(self, to: str, message: m.MailMessage, priority: str = "normal") -> int:
        """Store one message for `to`; returns its stream sequence."""
        subject, data, headers = self._prepare(to, message, priority)
        ack = await self.js.publish(subject, data, headers=headers)
        return ack.seq

    async def send_many(
        self, batch: Sequence[tuple[str, m.MailMessage, str]], window: int = 1_000
    ) -> int:
        """Store many messages, pipelined `window` at a time; returns how many were stored."""
        stored = 0
        for start in range(0, len(batch), window):
            futures = []
            for to, message, priority in batch[start : start + window]:
                subject, data, headers = self._prepare(to, message, priority)
                futures.append(await self.js.publish_async(subject, data, headers=headers))
            acks = await asyncio.gather(*futures)
            stored += len(acks)
        return stored

    # -- reading -----------------------------------------------------------------------------

    async def read(self, agent_id: str, limit: int = 1) -> list[Delivery]:
        """Up to `limit` messages for `agent_id`, highest priority first, not yet acked."""
        got: list[Delivery] = []
        now = datetime.now(UTC)
        for priority in subjects.PRIORITIES:
            if len(got) >= limit:
                break
            for msg in await self._pull(agent_id, priority, limit - len(got)):
                delivery = await self._open(agent_id, priority, msg, now)
                if delivery is not None:
                    got.append(delivery)
        return got

    async def next(self, agent_id: str, ack: bool = True) -> m.InboxItem | None:
        """The next message for `agent_id` (acked unless `ack` is False), or None."""
        found = await self.read(agent_id, 1)
        if not found:
            return None
        if ack:
            await found[0].ack()
            await self.nc.flush()
        return found[0].item

    async def wait(self, agent_id: str, timeout: float) -> bool:
        """Wait until mail for `agent_id` may have arrived (True) or `timeout` passes (False).

        A JetStream publish is also delivered to core subscribers of its subject, so a plain
        subscription on `fleet.mail.<agent>.*` is a doorbell: a reader loops `read`, then
        `wait` when it got nothing, and sees new mail within a round trip without polling.
        """
        if agent_id not in self._doorbells:
            bell = asyncio.Event()

            async def ring(_: Msg) -> None:
                bell.set()

            sub = await self.nc.subscribe(subjects.mailbox(agent_id), cb=ring)
            await self.nc.flush()
            self._doorbells[agent_id] = (sub, bell)
            return True  # mail may have come before the bell was hung: read again first
        bell = self._doorbells[agent_id][1]
        try:
            await asyncio.wait_for(bell.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            bell.clear()
        return True

    async def _open(self, to: str, priority: str, msg: Msg, now: datetime) -> Delivery | None:
        meta = msg.metadata
        try:
            message = m.decode(msg.data)
        except FleetError as e:
            log.warning("mail seq %s for %s dropped: %s", meta.sequence.stream, to, e)
            await msg.term()
            return None
        if m.expired(message, now):
            await msg.ack()  # past its TTL: gone, as if the server had dropped it already
            return None
        item = m.item(message, to, priority, meta.sequence.stream, meta.num_delivered)
        return Delivery(item, msg)

    async def peek(self, agent_id: str, limit: int = 20) -> list[m.InboxItem]:
        """What waits for `agent_id`, in reading order, without taking anything."""
        found: list[m.InboxItem] = []
        now = datetime.now(UTC)
        for priority in subjects.PRIORITIES:
            subject, seq = subjects.mail(agent_id, priority), 0
            while len(found) < limit:
                try:
                    raw = await self.js.get_msg(
                        subjects.MAIL_STREAM, seq=seq + 1, subject=subject, next=True
                    )
                except NotFoundError:  # nothing further on this subject
                    break
                seq = raw.seq or seq + 1
                try:
                    message = m.decode(raw.data or b"")
                except FleetError:
                    continue
                if not m.expired(message, now):
                    found.append(m.item(message, agent_id, priority, seq, 0))
        return found

    async def _pull(self, agent_id: str, priority: str, batch: int) -> list[Msg]:
        consumer = await self._consumer(agent_id, priority)
        inbox, sub, lock = self._pulls[consumer]
        api = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.MAIL_STREAM}.{consumer}"
        got: list[Msg] = []
        async with lock:  # one pull at a time per consumer: its inbox answers only that pull
            await self.nc.publish(api, _encode({"batch": batch, "no_wait": True}), reply=inbox)
            try:
                while len(got) < batch:
                    msg = await sub.next_msg(timeout=PULL_TIMEOUT_S)
                    if msg.headers and msg.headers.get("Status"):
                        break  # 404 no messages / 408 / 409: nothing more for now
                    got.append(msg)
            except TimeoutError as e:
                if not got:
                    raise StoreUnavailable(f"no answer to a mail pull for {agent_id}") from e
        return got

    async def _consumer(self, agent_id: str, priority: str) -> str:
        name = subjects.mail_consumer(agent_id, priority)
        if name in self._pulls:
            return name
        policy = self.policy
        config = ConsumerConfig(
            durable_name=name,
            filter_subject=subjects.mail(agent_id, priority),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=policy.max_deliver,
            backoff=list(policy.backoff_s),
            ack_wait=policy.backoff_s[0] if policy.backoff_s else 30.0,
            max_ack_pending=policy.max_ack_pending,
            max_waiting=512,
        )
        try:
            await self.js.add_consumer(subjects.MAIL_STREAM, config)
        except BadRequestError as e:
            if e.err_code != CONSUMER_EXISTS:
                raise
            log.debug("mail consumer %s exists with another configuration; used as is", name)
        inbox = self.nc.new_inbox()
        self._pulls[name] = (inbox, await self.nc.subscribe(inbox), asyncio.Lock())
        return name

    # -- request/response, broadcast ---------------------------------------------------------

    async def request(
        self, to: str, message: m.MailMessage, timeout: float, priority: str = "normal"
    ) -> m.InboxItem:
        """Mail `to` and wait for the answer it sends with `reply` (or raise `MailTimeout`)."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.send(to, msgspec.structs.replace(message, reply_to=inbox), priority)
            try:
                answer = await sub.next_msg(timeout=timeout)
            except TimeoutError as e:
                raise MailTimeout(to, timeout) from e
        finally:
            await sub.unsubscribe()
        return m.item(m.decode(answer.data), message.from_, priority, 0, 1)

    async def reply(self, to: m.InboxItem, body: str, from_: str) -> None:
        """Answer a message: on its `_INBOX.` subject if it waits, else by mail to `reply_to`."""
        if not to.reply_to:
            raise FleetError(f"the message {to.id or to.seq} from {to.from_} asks for no reply")
        answer = m.MailMessage(
            from_=from_,
            body=body,
            in_reply_to=to.id,
            sent_at=datetime.now(UTC),
            id=uuid.uuid4().hex,
        )
        if to.reply_to.startswith("_INBOX."):
            await self.nc.publish(to.reply_to, _encode(m.check(answer)))
            await self.nc.flush()
        else:
            await self.send(to.reply_to, answer, to.priority)

    async def broadcast(
        self, message: m.MailMessage, capabilities: Sequence[str] = (), priority: str = "normal"
    ) -> list[str]:
        """Mail every live agent (with every capability in `capabilities`); returns who."""
        entries = await registry.live(self.nc)
        to = sorted(e.id for e in entries if has(e, capabilities) and e.id != message.from_)
        for agent_id in to:
            await self.send(agent_id, message, priority)
        return to

    # -- topics (core NATS: at most once, wildcards allowed) ----------------------------------

    async def publish_topic(self, name: str, data: bytes) -> None:
        await self.nc.publish(subjects.topic(name), data)

    async def subscribe_topic(
        self, pattern: str, cb: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        sub = await self.nc.subscribe(subjects.topic(pattern), cb=cb)
        await self.nc.flush()
        return sub

    async def close(self) -> None:
        for _, sub, _ in self._pulls.values():
            await sub.unsubscribe()
        for sub, _ in self._doorbells.values():
            await sub.unsubscribe()
        self._pulls.clear()
        self._doorbells.clear()

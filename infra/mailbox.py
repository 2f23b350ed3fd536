"""Mail on JetStream: send, read in priority order, ack, request/response, broadcast, topics.

Protocol facts this module relies on:
- `FLEET_MAIL` is a work queue: an acked message is deleted. Each (agent, priority) has one
  durable pull consumer filtered on `fleet.mail.<agent>.<priority>`; filters never overlap,
  which a work-queue stream requires.
- A pull is a request to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with
  `{"batch": n, "no_wait": true}`: the server sends what it has now (up to n), then a status
  message (404 No Messages, 408, 409) if it had fewer. nats-py's `fetch` waits out its timeout
  on an empty consumer, so the pull is spoken here. A reader with the doorbell hung pulls only
  the priorities that rang (or were not seen empty lately); without it, every priority.
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
SEND_TIMEOUT_S = 10.0  # a rejected publish_async never resolves (nats.py issue 985)
MAX_PULLS_PER_READ = 12
# A pull that found a priority empty is trusted (that priority is not pulled again) until it
# rings, for EMPTY_TRUST_S at most: a redelivery after a backoff rings no bell. A ring is sent
# when the server routes a publish, a moment before the stream stores it, so a pull sent within
# RING_GRACE_S of a ring on its priority proves nothing.
EMPTY_TRUST_S = 0.5
RING_GRACE_S = 0.05
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


_RANKS = {p: i for i, p in enumerate(subjects.PRIORITIES)}


def _rank(delivery: Delivery) -> int:
    return _RANKS[delivery.item.priority]


def _is_status(msg: Msg) -> bool:
    return bool(msg.headers and msg.headers.get("Status"))


def _ready(sub: Subscription) -> list[Msg]:
    """What `sub` has received already, without waiting. nats-py's `next_msg` starts a task per
    call, which costs more than everything else about reading a message; this takes its queue
    (the one `next_msg` reads) as it is, keeping the same accounting."""
    queue = sub._pending_queue
    out: list[Msg] = []
    while not queue.empty():
        msg = queue.get_nowait()
        queue.task_done()
        sub._pending_size -= len(msg.data)
        out.append(msg)
    return out


@dataclass
class _Bell:
    """One agent's doorbell (a core subscription on `fleet.mail.<agent>.*`) and what it says.

    The server writes a ring to this connection when it routes a publish, before storing it,
    and answers a pull on the same connection: a ring for any message stored before a pull was
    answered is therefore received before that answer."""

    sub: Subscription
    rings: list[int] = field(default_factory=lambda: [0] * len(subjects.PRIORITIES))
    last_ring: list[float] = field(default_factory=lambda: [0.0] * len(subjects.PRIORITIES))
    # per rank: (rings counted, monotonic time) when a pull sent then found the priority empty
    empty: list[tuple[int, float] | None] = field(
        default_factory=lambda: [None] * len(subjects.PRIORITIES)
    )
    held: list[Delivery] = field(default_factory=list)

    def ring(self, msg: Msg) -> None:
        rank = _RANKS.get(msg.subject.rpartition(".")[2])
        if rank is not None:
            self.rings[rank] += 1
            self.last_ring[rank] = time.monotonic()

    def take_rings(self) -> int:
        rung = _ready(self.sub)
        for msg in rung:
            self.ring(msg)
        return len(rung)

    def may_have(self, rank: int, pulled_at: int, now: float) -> bool:
        """Whether priority `rank` may hold mail this read has not pulled yet."""
        if pulled_at >= 0:  # pulled in this read: again only if it rang since
            return self.rings[rank] > pulled_at
        known = self.empty[rank]
        if known is None:
            return True
        rings, at = known
        return (
            self.rings[rank] != rings
            or now - at > EMPTY_TRUST_S
            or at - self.last_ring[rank] < RING_GRACE_S
        )


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
        self._doorbells: dict[str, _Bell] = {}

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
            try:
                acks = await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_S)
            except TimeoutError as e:
                raise StoreUnavailable(f"mail store did not confirm {len(futures)} sends") from e
            stored += len(acks)
        return stored

    # -- reading -----------------------------------------------------------------------------

    async def read(self, agent_id: str, limit: int = 1) -> list[Delivery]:
        """Up to `limit` messages for `agent_id`, highest priority first, not yet acked.

        With the doorbell hung (`wait`), only priorities that may have mail are pulled and a
        priority that rang while a lower one was pulled is pulled again before anything is
        handed out; without it, every priority is pulled in order."""
        bell = self._doorbells.get(agent_id)
        if bell is not None:
            return await self._read_hinted(agent_id, limit, bell)
        got: list[Delivery] = []
        for priority in subjects.PRIORITIES:
            if len(got) >= limit:
                break
            msgs, _ = await self._pull(agent_id, priority, limit - len(got))
            got.extend(await self._open_all(agent_id, priority, msgs))
        return got

    async def _read_hinted(self, agent_id: str, limit: int, bell: _Bell) -> list[Delivery]:
        got, bell.held = bell.held, []
        pulled = [-1] * len(subjects.PRIORITIES)  # rings counted when pulled in this read
        top = len(subjects.PRIORITIES)  # the lowest priority that may be handed out, plus 1
        for pulls in range(MAX_PULLS_PER_READ + 1):
            bell.take_rings()
            got.sort(key=_rank)
            worst = _rank(got[limit - 1]) if len(got) >= limit else len(subjects.PRIORITIES)
            now = time.monotonic()
            rank = next((r for r in range(worst) if bell.may_have(r, pulled[r], now)), None)
            if rank is None:
                break
            if pulls == MAX_PULLS_PER_READ:  # still ringing: hand out nothing it could overtake
                top = rank + 1
                break
            pulled[rank] = bell.rings[rank]
            priority = subjects.PRIORITIES[rank]
            room = limit - sum(1 for d in got if _rank(d) <= rank)
            msgs, short = await self._pull(agent_id, priority, room)
            bell.empty[rank] = (pulled[rank], now) if short else None
            fresh = await self._open_all(agent_id, priority, msgs)
            seqs = {d.item.seq for d in fresh}  # a held message the server sent again
            got = [d for d in got if d.item.seq not in seqs or d.item.priority != priority]
            got.extend(fresh)
        out = [d for d in got if _rank(d) < top][:limit]
        # pulled while checking a higher priority, or behind one still ringing: handed out later
        bell.held = got[len(out) :]
        return out

    async def _open_all(self, to: str, priority: str, msgs: list[Msg]) -> list[Delivery]:
        now = datetime.now(UTC)
        opened = [await self._open(to, priority, msg, now) for msg in msgs]
        return [d for d in opened if d is not None]

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
        bell = self._doorbells.get(agent_id)
        if bell is None:
            sub = await self.nc.subscribe(subjects.mailbox(agent_id))
            await self.nc.flush()
            self._doorbells[agent_id] = _Bell(sub)
            return True  # mail may have come before the bell was hung: read again first
        if bell.take_rings():
            return True
        try:
            bell.ring(await bell.sub.next_msg(timeout=timeout))
        except TimeoutError:
            return False
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

    async def _pull(self, agent_id: str, priority: str, batch: int) -> tuple[list[Msg], bool]:
        """Up to `batch` messages of one priority, and whether the consumer ran out (a status
        ended the answer: 404 no messages, 408, 409)."""
        consumer = await self._consumer(agent_id, priority)
        inbox, sub, lock = self._pulls[consumer]
        api = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.MAIL_STREAM}.{consumer}"
        async with lock:  # one pull at a time per consumer: its inbox answers only that pull
            # Left from a pull that timed out: a late status is dropped, a late message kept.
            got = [msg for msg in _ready(sub) if not _is_status(msg)]
            if len(got) >= batch:
                return got, False
            want = batch - len(got)
            await self.nc.publish(api, _encode({"batch": want, "no_wait": True}), reply=inbox)
            while True:
                try:
                    first = await sub.next_msg(timeout=PULL_TIMEOUT_S)
                except TimeoutError as e:
                    if got:
                        return got, False
                    raise StoreUnavailable(f"no answer to a mail pull for {agent_id}") from e
                for msg in (first, *_ready(sub)):
                    if _is_status(msg):
                        return got, True
                    got.append(msg)
                if len(got) >= batch:
                    return got, False

    async def _consumer(self, agent_id: str, priority: str) -> str:
        name = subjects.mail_consumer(agent_id, priority)
        if name in self._pulls:
            return name
        policy = self.policy
        config = ConsumerConfig(
            # With `name` too, nats-py creates on $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>:
            # the server checks the filter against that subject, so an agent's NATS user may be
            # allowed exactly its own consumers (infra/natsauth.py).
            name=name,
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
        for bell in self._doorbells.values():
            for delivery in bell.held:  # pulled but never handed out: back to the mailbox now
                await delivery.msg.nak()
            await bell.sub.unsubscribe()
        self._pulls.clear()
        self._doorbells.clear()

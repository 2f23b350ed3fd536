"""Mail's priority pull and doorbell: one durable consumer per (agent, priority), pulled by hand.

Protocol facts this module relies on:
- `FLEET_MAIL` is a work queue: an acked message is deleted. Each (agent, priority) has one
  durable pull consumer filtered on `fleet.mail.<agent>.<priority>`; filters never overlap,
  which a work-queue stream requires.
- A pull is a request to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with
  `{"batch": n, "no_wait": true}`: the server sends what it has now (up to n), then a status
  message (404 No Messages, 408, 409) if it had fewer. nats-py's `fetch` waits out its timeout
  on an empty consumer, so the pull is spoken here. A reader with the doorbell hung pulls only
  the priorities that may have mail (a message rang and has not come yet, or the priority was
  not seen empty lately); without it, every priority.
- A `no_wait` pull is refused with 404 from the consumer's count of pending messages, which the
  stream's signal loop raises after it has stored the message and sent its PubAck: on a loaded
  machine a message can be stored for milliseconds while pulls of its consumer get 404 (seen
  here 0.5 to 4 ms). With `expires` too, the request is not refused on that count: the
  consumer reads the store itself and answers with what is there, or, if nothing is, with the
  first message that comes (then 404), or with 408 when `expires` passes. A priority that rang
  for a message not yet received is pulled that way.
- An unacked message comes back after the consumer's `backoff` delays; after `max_deliver`
  deliveries the server publishes `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<c>`,
  which `DeadLetters` turns into a copy on `fleet.deadmail.<agent>.<priority>`, a deletion
  and a warning on `fleet.notify.warning`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from schemas import mail as m
from schemas import subjects
from schemas.errors import StoreUnavailable

log = logging.getLogger(__name__)

CONSUMER_EXISTS = 10148  # JetStream API error: consumer already exists with another config
# A pull's answer waits behind whatever the server sent the connection before it (rings and
# PubAcks of pipelined sends): 5.5 s seen on a loaded 2-core machine in `bench bus`.
PULL_TIMEOUT_S = 15.0
# A pull that found a priority empty, with nothing rung there still to come, is trusted (that
# priority is not pulled again) for EMPTY_TRUST_S at most: a redelivery after a backoff rings
# no bell.
EMPTY_TRUST_S = 0.5
# How long a pull waits for a message that rang but has not come. It comes as soon as it is
# stored; one that never does (read by another reader, past its TTL, a duplicate Nats-Msg-Id
# the stream did not store) costs one such wait, and is then forgotten.
IN_FLIGHT_WAIT_S = 0.1
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


RANKS = {p: i for i, p in enumerate(subjects.PRIORITIES)}


def rank_of(delivery: Delivery) -> int:
    return RANKS[delivery.item.priority]


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


def _key(msg: Msg) -> int:
    """What a ring and the message a pull brings have in common: the payload, byte for byte."""
    return hash(msg.data)


@dataclass
class Bell:
    """One agent's doorbell (a core subscription on `fleet.mail.<agent>.*`) and what it says.

    The server writes a ring to this connection when it routes a publish, before storing it,
    and answers a pull on the same connection: a ring for any message stored before a pull was
    answered is therefore received before that answer. So a reader knows, per priority, which
    messages rang and have not come yet (`due`): until they come, lower ones are not handed
    out. (With the publisher on another connection, the server routes the ring and the
    stream's copy in one pass, so a ring may rarely come after its message: it is then due
    until one pull has waited IN_FLIGHT_WAIT_S for it.)"""

    sub: Subscription
    # per rank: payload hash -> (copies rung and not yet pulled, monotonic time of the first)
    due: list[dict[int, tuple[int, float]]] = field(
        default_factory=lambda: [{} for _ in subjects.PRIORITIES]
    )
    # per rank: monotonic time when a pull found the priority empty with nothing due
    empty: list[float | None] = field(default_factory=lambda: [None] * len(subjects.PRIORITIES))
    held: list[Delivery] = field(default_factory=list)

    def ring(self, msg: Msg) -> None:
        rank = RANKS.get(msg.subject.rpartition(".")[2])
        if rank is not None:
            due, key = self.due[rank], _key(msg)
            copies, since = due.get(key, (0, time.monotonic()))
            due[key] = (copies + 1, since)

    def take_rings(self) -> int:
        rung = _ready(self.sub)
        for msg in rung:
            self.ring(msg)
        return len(rung)

    def came(self, rank: int, msgs: list[Msg]) -> None:
        """Messages a pull of priority `rank` brought: no longer due. Take the rings first: a
        message's ring is received before the answer that carries it."""
        due = self.due[rank]
        for msg in msgs:
            key = _key(msg)
            copies, since = due.get(key, (0, 0.0))
            if copies > 1:
                due[key] = (copies - 1, since)
            elif copies:
                del due[key]

    def forget(self, rank: int, before: float) -> None:
        """A pull waited for priority `rank` and nothing came: what rang there before it was
        sent is not coming."""
        due = self.due[rank]
        for key in [k for k, (_, since) in due.items() if since < before]:
            del due[key]

    def may_have(self, rank: int, pulled: bool, now: float) -> bool:
        """Whether priority `rank` may hold mail this read has not pulled yet."""
        if self.due[rank]:
            return True
        if pulled:  # pulled in this read, and every message that rang there has come
            return False
        known = self.empty[rank]
        return known is None or now - known > EMPTY_TRUST_S


@dataclass
class Pulls:
    """The pull consumers of one connection, created on first use."""

    nc: Client
    js: JetStreamContext
    policy: MailPolicy
    # consumer name -> (its inbox, the subscription on it, the lock of its pulls). JetStream
    # delivers a pulled message with its own subject, so a shared inbox could not route it.
    _pulls: dict[str, tuple[str, Subscription, asyncio.Lock]] = field(default_factory=dict)

    async def pull(
        self, agent_id: str, priority: str, batch: int, wait_s: float = 0.0
    ) -> tuple[list[Msg], bool]:
        """Up to `batch` messages of one priority, and whether the consumer ran out (a status
        ended the answer: 404 no messages, 408, 409). With `wait_s`, the consumer's store is
        read and, if it is empty, the first message stored within `wait_s` is waited for."""
        consumer = await self._consumer(agent_id, priority)
        inbox, sub, lock = self._pulls[consumer]
        api = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.MAIL_STREAM}.{consumer}"
        async with lock:  # one pull at a time per consumer: its inbox answers only that pull
            # Left from a pull that timed out: a late status is dropped, a late message kept.
            got = [msg for msg in _ready(sub) if not _is_status(msg)]
            if len(got) >= batch:
                return got, False
            ask: dict[str, int | bool] = {"batch": batch - len(got), "no_wait": True}
            if wait_s > 0:
                ask["expires"] = int(wait_s * 1e9)  # nanoseconds
            await self.nc.publish(api, _encode(ask), reply=inbox)
            while True:
                try:
                    first = await sub.next_msg(timeout=PULL_TIMEOUT_S + wait_s)
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

    async def ping(self, agent_id: str) -> None:
        """One round trip to the server: the rings of mail stored before it was sent are
        received before its answer, as they are before a pull's."""
        try:
            await self.nc.flush(int(PULL_TIMEOUT_S))
        except TimeoutError as e:
            raise StoreUnavailable(f"no answer to a ping while reading mail for {agent_id}") from e

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

    async def close(self) -> None:
        for _, sub, _ in self._pulls.values():
            await sub.unsubscribe()
        self._pulls.clear()

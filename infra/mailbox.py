"""Mail on JetStream: send, read in priority order, ack, request/response, broadcast, topics.

`Mailbox` is what its users hold: it sends here and reads as a `MailReader` (infra/mailread.py),
which pulls each priority's consumer by hand (infra/mailpull.py, where the work-queue, pull
and redelivery facts are written down).

Header `Nats-TTL: <n>s` (stream `allow_msg_ttl`, nats-server 2.11+) makes the server drop the
message after n seconds; a reader also drops one whose `sent_at + ttl_s` has passed.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from infra import registry
from infra.mailread import MailReader
from schemas import mail as m
from schemas import subjects
from schemas.discovery import has
from schemas.errors import FleetError, MailTimeout, StoreUnavailable
from schemas.ratelimit import RateLimiter

SEND_TIMEOUT_S = 10.0  # a rejected publish_async never resolves (nats.py issue 985)
_encode = msgspec.json.Encoder().encode


@dataclass
class Mailbox(MailReader):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.limiter = RateLimiter(self.policy.send_rate, self.policy.send_burst, "mail messages")

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

"""Mail on JetStream: send, read in priority order, ack, request/response, broadcast, topics.

`Mailbox` is what its users hold: it sends here and reads as a `MailReader` (infra/mailread.py),
which pulls each priority's consumer by hand (infra/mailpull.py, where the work-queue, pull
and redelivery facts are written down). The control plane stores mail itself; an agent's
mailbox (`relay_as`) sends through the relay (actors/supervisor/mailrelay.py), which checks each
message and stores it, since an agent's NATS user may not publish mail or topics itself.

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
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from infra import registry
from infra.mailread import MailReader
from schemas import mail as m
from schemas import subjects
from schemas.discovery import has
from schemas.errors import (
    FleetError,
    MailTimeout,
    PayloadTooLarge,
    RemoteError,
    StoreUnavailable,
)
from schemas.ratelimit import RateLimiter

SEND_TIMEOUT_S = 10.0  # a rejected publish_async never resolves (nats.py issue 985)
RELAY_TIMEOUT_S = 15.0  # the relay's answer, behind a JetStream store on a loaded machine
_encode = msgspec.json.Encoder().encode


@dataclass
class Mailbox(MailReader):
    relay_as: str = ""  # inside an agent: its id, and everything it sends goes by the relay

    def __post_init__(self) -> None:
        super().__post_init__()
        self.limiter = RateLimiter(self.policy.send_rate, self.policy.send_burst, "mail messages")
        if self.relay_as:
            subjects.token(self.relay_as, "mail sender")

    async def _relay(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """One request to the relay; its refusal is a `RemoteError` with its sentence."""
        try:
            msg = await self.nc.request(subject, data, timeout=RELAY_TIMEOUT_S, headers=headers)
        except NoRespondersError as e:
            raise StoreUnavailable(f"nothing answers on {subject}; is `fleet up` running?") from e
        except TimeoutError as e:
            raise StoreUnavailable(f"no answer on {subject} within {RELAY_TIMEOUT_S:g} s") from e
        try:
            reply = msgspec.json.decode(msg.data, type=dict[str, Any])
        except msgspec.DecodeError as e:
            raise RemoteError("bad_reply", f"the relay's answer is not JSON: {e}") from e
        if reply.get("ok") is not True:
            error = reply.get("error") or {}
            code, sentence = str(error.get("code", "error")), str(error.get("message", ""))
            raise RemoteError(code, sentence or "the relay refused the message")
        return reply

    async def _relay_mail(
        self, to: str, message: m.MailMessage, priority: str, capabilities: Sequence[str] = ()
    ) -> dict[str, Any]:
        send = m.MailSend(
            to=to,
            priority=priority,
            body=message.body,
            subject=message.subject,
            reply_to=message.reply_to,
            ttl_s=message.ttl_s,
            headers=message.headers,
            in_reply_to=message.in_reply_to,
            broadcast=not to,
            capabilities=tuple(capabilities),
        )
        m.check(msgspec.structs.replace(message, from_=self.relay_as))
        data = _encode(send)
        if len(data) > m.MAX_MESSAGE_BYTES:  # the relay would refuse it; NATS might cut it off
            raise PayloadTooLarge("mail message", len(data), m.MAX_MESSAGE_BYTES)
        return await self._relay(subjects.mail_relay(self.relay_as), data)

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
        if self.relay_as:
            subjects.mail(to, priority)  # a bad name or priority: refused here already
            return int((await self._relay_mail(to, message, priority))["seq"])
        subject, data, headers = self._prepare(to, message, priority)
        ack = await self.js.publish(subject, data, headers=headers)
        return ack.seq

    async def send_many(
        self, batch: Sequence[tuple[str, m.MailMessage, str]], window: int = 1_000
    ) -> int:
        """Store many messages, pipelined `window` at a time; returns how many were stored."""
        if self.relay_as:
            for to, message, priority in batch:
                await self.send(to, message, priority)
            return len(batch)
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
        """Mail `to` and wait for the answer it sends with `reply` (or raise `MailTimeout`).
        An agent waits on its own reply inbox; the control plane on a random subject under
        WAIT_INBOX_PREFIX, the one kind of inbox besides agents' that the relay answers."""
        inbox = (
            self.nc.new_inbox() if self.relay_as else f"{m.WAIT_INBOX_PREFIX}.{uuid.uuid4().hex}"
        )
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
        if to.reply_to.startswith("_INBOX.") and self.relay_as:
            send = m.MailSend(body=body, in_reply_to=to.id, answer_inbox=to.reply_to)
            await self._relay(subjects.mail_relay(self.relay_as), _encode(send))
        elif to.reply_to.startswith("_INBOX."):
            await self.nc.publish(to.reply_to, _encode(m.check(answer)))
            await self.nc.flush()
        else:
            await self.send(to.reply_to, answer, to.priority)

    async def broadcast(
        self, message: m.MailMessage, capabilities: Sequence[str] = (), priority: str = "normal"
    ) -> list[str]:
        """Mail every live agent (with every capability in `capabilities`); returns who."""
        if self.relay_as:
            found = await self._relay_mail("", message, priority, capabilities)
            return [str(a) for a in found["to"]]
        entries = await registry.live(self.nc)
        to = sorted(e.id for e in entries if has(e, capabilities) and e.id != message.from_)
        for agent_id in to:
            await self.send(agent_id, message, priority)
        return to

    # -- topics (core NATS: at most once, wildcards allowed) ----------------------------------

    async def publish_topic(self, name: str, data: bytes) -> None:
        subject = subjects.topic(name)
        if self.relay_as:
            if len(data) > m.MAX_TOPIC_BYTES:
                raise PayloadTooLarge("topic message", len(data), m.MAX_TOPIC_BYTES)
            headers = {m.TOPIC_HEADER: name}
            await self._relay(subjects.topic_relay(self.relay_as), data, headers)
            return
        await self.nc.publish(subject, data)

    async def subscribe_topic(
        self, pattern: str, cb: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        sub = await self.nc.subscribe(subjects.topic(pattern), cb=cb)
        await self.nc.flush()
        return sub

"""The mail and topic relay: what agents send to each other, checked before it is stored.

An agent's NATS user may not publish on `fleet.mail.>` or `fleet.topic.>` (infra/natsauth.py):
it sends a request on `fleet.ctl.mail.<itself>` or `fleet.ctl.topic.<itself>` instead, the
only sender token its permissions allow, and the supervisor answers here. So every message an
agent sends is checked when it is sent, and refused with a sentence that its sender reads:

- mail: the recipient is an agent the fleet knows (one that has not been removed), the
  priority is one of the four, the body and the whole message are within their limits, a
  `reply_to` is the sender's own reply inbox or a known agent, and `from` is the sender (a
  message cannot claim to come from anyone else);
- answers to a waiting sender (`answer_inbox`): only to a known agent's reply inbox or to
  where the control plane waits for mail, never to any other `_INBOX` (an agent may not
  publish there itself: it could forge the reply to a request of the control plane);
- topics: a topic name without wildcards, a payload within MAX_TOPIC_BYTES;
- both: a token bucket per sender (AGENT_MAIL_RATE, AGENT_TOPIC_RATE), so one agent cannot
  flood the store, the other agents or this relay.

The relay has a NATS connection of its own, so a flood of requests slows this connection
only, never the supervisor's (a server drops a client that cannot keep up: slow consumer).

A store that refuses (a full mailbox: FLEET_MAIL's per-subject limit, or the stream's bytes)
is refused to the sender with the store's reason; nothing is dropped to make room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from infra import errorlog, natsauth, registry
from infra.mailbox import Mailbox
from schemas import mail as m
from schemas import replies, subjects
from schemas.discovery import has
from schemas.errors import BadRequest, FleetError, PayloadTooLarge, StoreUnavailable, UnknownAgent
from schemas.ratelimit import RateLimiter

log = logging.getLogger(__name__)
Handler = Callable[[Msg], Awaitable[bytes]]
MAIL_QUEUE = "fleet-mail-relay"
TOPIC_QUEUE = "fleet-topic-relay"


class MailboxFull(FleetError):
    """The store refused a message: the recipient's mailbox (or all mail) is at its limit."""

    code = "mailbox_full"

    def __init__(self, to: str, priority: str, why: str) -> None:
        self.to, self.priority = to, priority
        super().__init__(
            f"mail to {to} ({priority}) was not stored: {why}; it is sent once {to} has read "
            "some of its mail"
        )


class MailRelay:
    """Answers `fleet.ctl.mail.*` and `fleet.ctl.topic.*` for the agents in `known()`."""

    def __init__(self, nc: Client, known: Callable[[], Collection[str]]) -> None:
        self.nc = nc
        self.known = known
        self.box = Mailbox(nc)
        self.mail_limit = RateLimiter(m.AGENT_MAIL_RATE, m.AGENT_MAIL_BURST, "mail messages")
        self.topic_limit = RateLimiter(m.AGENT_TOPIC_RATE, m.AGENT_TOPIC_BURST, "topic messages")
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for subject, queue, handler in (
            (subjects.ALL_MAIL_RELAY, MAIL_QUEUE, self.mail),
            (subjects.ALL_TOPIC_RELAY, TOPIC_QUEUE, self.topic),
        ):
            self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=self._on(handler)))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    def _on(self, handler: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            task = asyncio.get_running_loop().create_task(self._answer(msg, handler))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return on_msg

    async def _answer(self, msg: Msg, handler: Handler) -> None:
        try:
            reply = await handler(msg)
        except Exception as e:  # noqa: BLE001 (the one error boundary: infra/errorlog.py)
            reply = errorlog.reply_to(e, log, f"relay of {msg.subject}")
        if msg.reply:
            await msg.respond(reply)

    # -- mail --------------------------------------------------------------------------------

    async def mail(self, msg: Msg) -> bytes:
        sender = subjects.relay_sender(msg.subject)
        self.mail_limit.check(sender, time.monotonic())  # first: a flood costs one check each
        send: m.MailSend = replies.decode_request(
            msg.data, m.MailSend, "mail request", m.MAX_MESSAGE_BYTES
        )
        message = m.relayed(send, sender)
        self._check_reply_to(send.reply_to, sender)
        if send.answer_inbox:
            self._check_answer_inbox(send.answer_inbox)
            await self.nc.publish(send.answer_inbox, msgspec.json.encode(message))
            return replies.ok()
        if send.broadcast:
            return replies.ok(to=await self._broadcast(message, send))
        if send.to not in self.known():
            subjects.token(send.to, "mail recipient")
            raise UnknownAgent(send.to)
        return replies.ok(seq=await self._store(send.to, message, send.priority))

    def _check_reply_to(self, reply_to: str, sender: str) -> None:
        """A reply goes to the sender's own inbox or to an agent: never into another
        client's reply inbox (that would forge an answer to someone else's request)."""
        if not reply_to or reply_to.startswith(natsauth.agent_inbox(sender) + "."):
            return
        if reply_to in self.known():
            return
        raise BadRequest(
            f"invalid reply_to {reply_to[:80]!r}: use a known agent's id or your own reply "
            f"inbox ({natsauth.agent_inbox(sender)}.*)",
            "invalid_field",
        )

    def _check_answer_inbox(self, inbox: str) -> None:
        """An answer goes to a known agent's reply inbox or to where the control plane waits
        for mail (`WAIT_INBOX_PREFIX`, a random token after it): never to another client's
        request inbox, which would forge the answer to a request of the control plane."""
        prefix = natsauth.INBOX + "." + natsauth.AGENT_USER_PREFIX
        if inbox.startswith(m.WAIT_INBOX_PREFIX + ".") and len(inbox.split(".")) == 3:
            return
        if inbox.startswith(prefix):
            owner = inbox.removeprefix(prefix).split(".", 1)[0]
            if owner in self.known() and inbox.startswith(natsauth.agent_inbox(owner) + "."):
                return
        raise BadRequest(
            f"invalid answer_inbox {inbox[:80]!r}: an answer goes to the reply_to of the "
            "message it answers (an agent's reply inbox, or a waiting `fleet mail send`)",
            "invalid_field",
        )

    async def _broadcast(self, message: m.MailMessage, send: m.MailSend) -> list[str]:
        known = set(self.known())
        entries = await registry.live(self.nc)
        to = sorted(
            e.id
            for e in entries
            if e.id in known and e.id != message.from_ and has(e, send.capabilities)
        )
        for agent_id in to:
            await self._store(agent_id, message, send.priority)
        return to

    async def _store(self, to: str, message: m.MailMessage, priority: str) -> int:
        try:
            return await self.box.send(to, message, priority)
        except APIError as e:  # the stream refused it: a limit (10077), the store
            raise MailboxFull(to, priority, e.description or str(e)) from e
        except TimeoutError as e:
            raise StoreUnavailable(f"the mail store did not confirm mail to {to}") from e

    # -- topics ------------------------------------------------------------------------------

    async def topic(self, msg: Msg) -> bytes:
        sender = subjects.relay_sender(msg.subject)
        self.topic_limit.check(sender, time.monotonic())
        name = (msg.headers or {}).get(m.TOPIC_HEADER, "")
        if not name or "*" in name.split(".") or ">" in name.split("."):
            raise BadRequest(
                f"a topic publish names its topic (header {m.TOPIC_HEADER}) without wildcards",
                "invalid_field",
            )
        subject = subjects.topic(name)
        if len(msg.data) > m.MAX_TOPIC_BYTES:
            raise PayloadTooLarge("topic message", len(msg.data), m.MAX_TOPIC_BYTES)
        await self.nc.publish(subject, msg.data, headers={m.FROM_HEADER: sender})
        return replies.ok()

"""Inter-agent mail: the message on `fleet.mail.<agent>.<priority>` and what a reader sees.

A message is JSON with at least `from` and `body`. NATS has no per-message priority, so the
priority is the last subject token and a reader fetches each priority's consumer in
`PRIORITIES` order (highest first). `ttl_s` is enforced twice: the server drops the message
after it (header `Nats-TTL`), and a reader drops one whose `sent_at + ttl_s` has passed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from schemas.errors import BadRequest, PayloadTooLarge
from schemas.replies import decode_request
from schemas.subjects import PRIORITIES, token

MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 128 * 1024  # the whole JSON message, also the stream's max_msg_size
MAX_TOPIC_BYTES = 64 * 1024  # one topic publish relayed for an agent
MAX_HEADERS = 32
MAX_TTL_S = 365 * 24 * 3600.0  # a TTL past NATS's own limit (~292 years) was a 500
DEFAULT_PRIORITY = "normal"
# Per agent, what the relay lets through (a token bucket each): a burst, then a rate.
AGENT_MAIL_RATE, AGENT_MAIL_BURST = 20.0, 200.0
AGENT_TOPIC_RATE, AGENT_TOPIC_BURST = 100.0, 1_000.0
# Header on a topic message the relay sends on for an agent: who published it.
FROM_HEADER = "Fleet-From"
TOPIC_HEADER = "Fleet-Topic"  # on a relay request: the topic to publish on
# Where the control plane waits for the answer to its mail (`fleet mail send --wait`): a
# subject no one can guess (a random token follows), that an agent's answer may be sent to.
WAIT_INBOX_PREFIX = "_INBOX.mailwait"


class MailMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message as stored in `FLEET_MAIL`."""

    from_: str = msgspec.field(name="from")
    body: str
    subject: str = ""
    reply_to: str = ""  # an agent id (the reply is mailed there) or a `_INBOX.` subject
    ttl_s: float = 0.0  # 0: kept until read
    headers: dict[str, str] = {}
    id: str = ""
    sent_at: datetime | None = None
    in_reply_to: str = ""  # the `id` of the message this one answers


class MailSend(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request on `fleet.ctl.mail.<sender>`: mail that an agent sends through the relay.
    The sender is the subject's last token (the agent's NATS user may publish only there)."""

    to: str = ""  # an agent id; with `broadcast`, empty
    priority: str = DEFAULT_PRIORITY
    body: str
    subject: str = ""
    reply_to: str = ""
    ttl_s: float = 0.0
    headers: dict[str, str] = {}
    in_reply_to: str = ""
    broadcast: bool = False  # to every live agent (with every capability in `capabilities`)
    capabilities: tuple[str, ...] = ()
    # An answer to a message whose sender waits: its `reply_to` inbox, where the answer goes
    # (core NATS, not stored); then `to` is empty.
    answer_inbox: str = ""


class InboxItem(msgspec.Struct, frozen=True, kw_only=True):
    """A message as a reader gets it: the message plus where it sat in the mailbox."""

    to: str
    priority: str
    from_: str = msgspec.field(name="from")
    body: str
    subject: str = ""
    reply_to: str = ""
    ttl_s: float = 0.0
    headers: dict[str, str] = {}
    id: str = ""
    sent_at: datetime | None = None
    in_reply_to: str = ""
    seq: int = 0  # stream sequence in FLEET_MAIL
    deliveries: int = 1  # how many times it has been handed out (redeliveries count)


def rank(priority: str) -> int:
    """0 for `critical` (read first) to 3 for `low`; an unknown priority is refused."""
    try:
        return PRIORITIES.index(priority)
    except ValueError:
        raise BadRequest(
            f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}", "invalid_field"
        ) from None


def check(message: MailMessage) -> MailMessage:
    """Refuse a message that cannot be sent: no sender, a body over the limit, a bad TTL."""
    token(message.from_, "mail sender")
    size = len(message.body.encode())
    if size > MAX_BODY_BYTES:
        raise PayloadTooLarge("mail body", size, MAX_BODY_BYTES)
    if not 0 <= message.ttl_s <= MAX_TTL_S:
        sentence = (
            f"invalid ttl_s {message.ttl_s:g}: must be 0 (no TTL) to {MAX_TTL_S:.0f} s "
            "(a year; mail kept longer is sent with no TTL)"
        )
        raise BadRequest(sentence, "invalid_field")
    return message


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        sentence = f"a message may carry at most {MAX_HEADERS} headers, this one has {len(headers)}"
        raise BadRequest(sentence, "invalid_field")
    return headers


def relayed(send: MailSend, sender: str) -> MailMessage:
    """The message a relay stores for `sender`: its own id as `from`, whatever the request
    said; refused like any message (`check`), and for a bad priority."""
    rank(send.priority)
    check_headers(send.headers)
    message = MailMessage(
        from_=sender,
        body=send.body,
        subject=send.subject,
        reply_to=send.reply_to,
        ttl_s=send.ttl_s,
        headers=send.headers,
        in_reply_to=send.in_reply_to,
    )
    return check(message)


def decode(data: bytes) -> MailMessage:
    """A stored message; every way it can be wrong is a `BadRequest` with one sentence."""
    found: MailMessage = decode_request(data, MailMessage, "mail message")
    return found


def expired(message: MailMessage, now: datetime) -> bool:
    if not message.ttl_s or message.sent_at is None:
        return False
    return message.sent_at + timedelta(seconds=message.ttl_s) <= now


def item(message: MailMessage, to: str, priority: str, seq: int, deliveries: int) -> InboxItem:
    return InboxItem(
        to=to,
        priority=priority,
        from_=message.from_,
        body=message.body,
        subject=message.subject,
        reply_to=message.reply_to,
        ttl_s=message.ttl_s,
        headers=message.headers,
        id=message.id,
        sent_at=message.sent_at,
        in_reply_to=message.in_reply_to,
        seq=seq,
        deliveries=deliveries,
    )


class DeadLetterNotice(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `fleet.notify.warning` when a message is moved to `FLEET_MAIL_DLQ`."""

    kind: str = "mail.dead_letter"
    severity: str = "warning"
    agent_id: str
    priority: str
    from_: str = msgspec.field(name="from", default="")
    seq: int  # its sequence in FLEET_MAIL (gone from there now)
    dead_seq: int  # its sequence in FLEET_MAIL_DLQ
    deliveries: int
    message: str

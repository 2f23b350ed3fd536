"""What a command request carries besides its command: its verb, its id, its sender, and how
long it may wait for the agent's lock before it is answered `busy`."""

from __future__ import annotations

import hashlib

from nats.aio.msg import Msg

from schemas import commands as c
from schemas import subjects

BUSY_AFTER_S = 4.0  # a command waits this long for the agent's lock, then is answered busy
BUSY_MAX_S = 60.0  # the longest wait a sender's Fleet-Timeout can ask for


def verb(cmd: c.AgentCommand) -> str:
    """The command's wire name (`stop`, `send`, ...)."""
    return str(type(cmd).__struct_config__.tag)


def busy_budget(headers: dict[str, str] | None) -> float:
    """How long a command may wait for the agent's lock before it is answered `busy`: half
    of what its sender said it waits (header `Fleet-Timeout`, seconds), so the refusal is
    there before the sender gives up; `BUSY_AFTER_S` from a sender that did not say."""
    raw = (headers or {}).get(subjects.TIMEOUT_HEADER, "")
    try:
        patience = float(raw)
    except ValueError:
        return BUSY_AFTER_S
    if not patience > 0:  # also NaN
        return BUSY_AFTER_S
    return min(max(patience / 2, 0.05), BUSY_MAX_S)


def request_id(reply_to: str) -> str:
    """The id of a command sent without one: named after its reply inbox, which is the
    request's own (nats-py makes one per request), so every copy of it gets the same id."""
    return "inbox-" + hashlib.sha256(reply_to.encode()).hexdigest()[:32]


def sender(msg: Msg) -> str:
    """Who sent a request, for rate limits: its connection's reply prefix (nats-py answers
    every request of one connection on `_INBOX.<connection nuid>.<token>`)."""
    return msg.reply.rsplit(".", 1)[0] if msg.reply else "no-reply"

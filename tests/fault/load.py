"""Load for the fault tests: checked appends and mail, each retried until acknowledged.

A writer counts an append or a send only once the server has acknowledged it; a failed
attempt (the server died, the disk is full, the leader moved) is retried with the same event
ids and message ids, so the stream's de-duplication keeps one copy. Afterwards `lost_events`
and `lost_mail` compare what was acknowledged with what the stream holds.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from infra.eventstore import EventStore
from infra.mailbox import Mailbox
from schemas import mail as m
from schemas import subjects
from schemas.chain import Position
from schemas.errors import FleetError
from schemas.events import AgentEvent, InputSent

RETRY_S = 0.05


def input_event(agent_id: str, n: int) -> AgentEvent:
    return InputSent(
        agent_id=agent_id, event_id=uuid.uuid4().hex, at=datetime.now(UTC), text=str(n)
    )


@dataclass
class Tally:
    """What one writer had acknowledged, and how many attempts failed on the way."""

    acked: list[str] = field(default_factory=list)  # event or message ids, in ack order
    failures: list[str] = field(default_factory=list)  # one line per failed attempt


async def append_until(
    store: EventStore, agent_id: str, stop: asyncio.Event, tally: Tally, limit: int = 10**9
) -> None:
    """Append one event at a time to `agent_id`'s log (checked), until `stop` or `limit`."""
    position = Position()
    n = 0
    while not stop.is_set() and n < limit:
        event = input_event(agent_id, n)
        while True:
            try:
                position = await store.append(agent_id, [event], position)
                break
            except (FleetError, NatsError, TimeoutError) as e:
                tally.failures.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(RETRY_S)
        tally.acked.append(event.event_id)
        n += 1


async def mail_until(
    mailbox: Mailbox, to: str, stop: asyncio.Event, tally: Tally, pause_s: float = 0.002
) -> None:
    """Send one message at a time to `to`, each retried with its id until acknowledged; a
    short pause between sends leaves the event loop to the appenders too."""
    n = 0
    while not stop.is_set():
        message = m.MailMessage(from_="fault-test", body=f"message {n}", id=uuid.uuid4().hex)
        while True:
            try:
                await mailbox.send(to, message, "high")
                break
            except (FleetError, NatsError, TimeoutError) as e:
                tally.failures.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(RETRY_S)
        tally.acked.append(message.id)
        n += 1
        await asyncio.sleep(pause_s)


async def lost_events(store: EventStore, agent_id: str, tally: Tally) -> list[str]:
    """Acknowledged event ids the log does not hold; the log must also hold nothing else."""
    stored = [s.event.event_id for s in await store.read(agent_id) if s.event is not None]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert stored == tally.acked[: len(stored)], "the log differs from what was acknowledged"
    return tally.acked[len(stored) :]


async def lost_mail(nc: Client, to: str, tally: Tally) -> list[str]:
    """Acknowledged message ids that `to`'s high-priority mail does not hold (nobody reads it)."""
    js = nc.jetstream()
    subject = subjects.mail(to, "high")
    held: list[str] = []
    seq = 0
    while True:
        try:
            raw = await js.get_msg(subjects.MAIL_STREAM, seq=seq + 1, subject=subject, next=True)
        except NotFoundError:  # nothing further on this subject
            break
        seq = raw.seq or seq + 1
        held.append(m.decode(raw.data or b"").id)
    assert len(held) == len(set(held)), "a message was stored twice"
    return sorted(set(tally.acked) - set(held))

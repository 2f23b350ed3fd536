"""Load for the fault tests: checked appends and mail, each retried until acknowledged.

A writer counts an append or a send only once the server has acknowledged it; a failed
attempt (the server died, the disk is full, the leader moved) is retried with the same event
ids and message ids, so the stream's de-duplication keeps one copy. Afterwards `lost_events`
and `lost_mail` compare what was acknowledged with what the stream holds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

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
T = TypeVar("T")


def input_event(agent_id: str, n: int) -> AgentEvent:
    return InputSent(
        agent_id=agent_id, event_id=uuid.uuid4().hex, at=datetime.now(UTC), text=str(n)
    )


@dataclass
class Tally:
    """What one writer had acknowledged, and how many attempts failed on the way."""

    acked: list[str] = field(default_factory=list)  # event or message ids, in ack order
    failures: list[str] = field(default_factory=list)  # one line per failed attempt


async def retried(attempt: Callable[[], Awaitable[T]], tally: Tally) -> T:
    """`attempt` again after each failure (counted in `tally`) until the server acknowledges."""
    while True:
        try:
            return await attempt()
        except (FleetError, NatsError, TimeoutError) as e:
            tally.failures.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(RETRY_S)


async def append_until(
    store: EventStore, agent_id: str, stop: asyncio.Event, tally: Tally, limit: int = 10**9
) -> None:
    """Append one event at a time to `agent_id`'s log (checked), until `stop` or `limit`."""
    position = Position()
    n = 0
    while not stop.is_set() and n < limit:
        event = input_event(agent_id, n)
        position = await retried(partial(store.append, agent_id, [event], position), tally)
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
        await retried(partial(mailbox.send, to, message, "high"), tally)
        tally.acked.append(message.id)
        n += 1
        await asyncio.sleep(pause_s)


@dataclass
class Load:
    """Appenders to agents load-0, load-1, ... and one sender of mail to load-mail, all on one
    connection, each counting what was acknowledged, until `finish`."""

    store: EventStore
    tallies: list[Tally]  # one per appender, then the mail sender's
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]

    @classmethod
    def start(cls, nc: Client, writers: int) -> Load:
        store, stop = EventStore(nc), asyncio.Event()
        tallies = [Tally() for _ in range(writers + 1)]
        tasks = [
            asyncio.create_task(append_until(store, f"load-{i}", stop, tallies[i]))
            for i in range(writers)
        ]
        tasks.append(asyncio.create_task(mail_until(Mailbox(nc), "load-mail", stop, tallies[-1])))
        return cls(store, tallies, stop, tasks)

    def acked(self) -> list[int]:
        """How many writes each appender, then the mail sender, has had acknowledged."""
        return [len(t.acked) for t in self.tallies]

    def carried_on(self, since: list[int], writes: int = 50) -> bool:
        """Whether every writer has had `writes` more acknowledged than at `since`."""
        return all(a >= b + writes for a, b in zip(self.acked(), since, strict=True))

    async def finish(self, timeout: float) -> None:
        """Stop every writer after its current write, and wait for them all."""
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout)


async def until(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `check` (a look at counters, no I/O) until it holds; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


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

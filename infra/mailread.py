"""Reading mail: highest priority first, the doorbell that says what to pull, peeking, TTLs.

A reader loops `read`, then `wait` when it got nothing. Once `wait` has hung the doorbell, a
read pulls only the priorities that may have mail and hands out nothing while a higher
priority has a message that rang and has not come (infra/mailpull.py says how that is known
and why a pull must wait for it); without it, every priority is pulled in order. A message
whose `sent_at + ttl_s` has passed is acked and dropped, as if the server had dropped it
already (header `Nats-TTL`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from infra.mailpull import IN_FLIGHT_WAIT_S, Bell, Delivery, MailPolicy, Pulls, rank_of
from schemas import mail as m
from schemas import subjects
from schemas.errors import FleetError

log = logging.getLogger(__name__)

MAX_PULLS_PER_READ = 12


def _next_pull(
    bell: Bell, got: list[Delivery], limit: int, pulled: list[bool], now: float
) -> int | None:
    """The rank to pull next, `got` sorted: the highest that may hold mail for this batch. One
    pulled already in this read is pulled again only for mail that rang and has not come, and
    only if that mail would go before something in the batch, or the batch is empty: mail of
    the batch's own priority or a lower one is left for the next read, not waited for."""
    worst = rank_of(got[limit - 1]) if len(got) >= limit else len(subjects.PRIORITIES)
    lowest = rank_of(got[-1]) if got else len(subjects.PRIORITIES)
    for rank in range(worst):
        if bell.may_have(rank, pulled[rank], now) and (not pulled[rank] or rank < lowest):
            return rank
    return None


@dataclass
class MailReader:
    nc: Client
    policy: MailPolicy = field(default_factory=MailPolicy)

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        self._pulls = Pulls(self.nc, self.js, self.policy)
        self._doorbells: dict[str, Bell] = {}

    async def read(self, agent_id: str, limit: int = 1) -> list[Delivery]:
        """Up to `limit` messages for `agent_id`, highest priority first, not yet acked.

        With the doorbell hung (`wait`), only priorities that may have mail are pulled, and
        nothing is handed out while a higher priority has a message that rang and has not come
        (its pull waits for it, up to IN_FLIGHT_WAIT_S); without it, every priority is pulled
        in order."""
        bell = self._doorbells.get(agent_id)
        if bell is not None:
            return await self._read_hinted(agent_id, limit, bell)
        got: list[Delivery] = []
        for priority in subjects.PRIORITIES:
            if len(got) >= limit:
                break
            msgs, _ = await self._pulls.pull(agent_id, priority, limit - len(got))
            got.extend(await self._open_all(agent_id, priority, msgs))
        return got

    async def _read_hinted(self, agent_id: str, limit: int, bell: Bell) -> list[Delivery]:
        got, bell.held = bell.held, []
        pulled = [False] * len(subjects.PRIORITIES)
        top = len(subjects.PRIORITIES)  # the lowest priority that may be handed out, plus 1
        for pulls in range(MAX_PULLS_PER_READ + 1):
            bell.take_rings()
            got.sort(key=rank_of)
            now = time.monotonic()
            rank = _next_pull(bell, got, limit, pulled, now)
            if rank is None and got and pulls == 0:
                # Only held mail to hand out: the rings of what was stored before this read
                # may still be on the way, and a round trip brings them.
                await self._pulls.ping(agent_id)
                continue
            if rank is None:
                break
            if pulls == MAX_PULLS_PER_READ:  # still ringing: hand out nothing it could overtake
                top = rank + 1
                break
            got = await self._pull_hinted(agent_id, limit, bell, rank, got, now)
            pulled[rank] = True
        out = [d for d in got if rank_of(d) < top][:limit]
        # pulled while checking a higher priority, or behind one still ringing: handed out later
        bell.held = got[len(out) :]
        return out

    async def _pull_hinted(
        self, agent_id: str, limit: int, bell: Bell, rank: int, got: list[Delivery], now: float
    ) -> list[Delivery]:
        """`got` with what one pull of priority `rank` brought (waiting for what is due)."""
        priority = subjects.PRIORITIES[rank]
        room = limit - sum(1 for d in got if rank_of(d) <= rank)
        wait_s = IN_FLIGHT_WAIT_S if bell.due[rank] else 0.0
        msgs, short = await self._pulls.pull(agent_id, priority, room, wait_s)
        bell.take_rings()  # the rings of what came, received before it
        bell.came(rank, msgs)
        if short and wait_s and not msgs:
            bell.forget(rank, now)
        bell.empty[rank] = now if short and not bell.due[rank] else None
        fresh = await self._open_all(agent_id, priority, msgs)
        seqs = {d.item.seq for d in fresh}  # a held message the server sent again
        kept = [d for d in got if d.item.seq not in seqs or d.item.priority != priority]
        return kept + fresh

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
            self._doorbells[agent_id] = Bell(sub)
            return True  # mail may have come before the bell was hung: read again first
        if bell.take_rings() or any(bell.due):  # rang, or rang and not read yet
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

    async def close(self) -> None:
        await self._pulls.close()
        for bell in self._doorbells.values():
            for delivery in bell.held:  # pulled but never handed out: back to the mailbox now
                await delivery.msg.nak()
            await bell.sub.unsubscribe()
        self._doorbells.clear()

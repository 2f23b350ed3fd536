"""Reading mail: highest priority first, the doorbell that says what to pull, peeking, TTLs.

A reader loops `read`, then `wait` when it got nothing. Once `wait` has hung the doorbell, a
read pulls only the priorities that may have mail (infra/mailpull.py says how that is known);
without it, every priority is pulled in order. A message whose `sent_at + ttl_s` has passed
is acked and dropped, as if the server had dropped it already (header `Nats-TTL`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from infra.mailpull import Bell, Delivery, MailPolicy, Pulls, rank_of
from schemas import mail as m
from schemas import subjects
from schemas.errors import FleetError

log = logging.getLogger(__name__)

MAX_PULLS_PER_READ = 12


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
            msgs, _ = await self._pulls.pull(agent_id, priority, limit - len(got))
            got.extend(await self._open_all(agent_id, priority, msgs))
        return got

    async def _read_hinted(self, agent_id: str, limit: int, bell: Bell) -> list[Delivery]:
        got, bell.held = bell.held, []
        pulled = [-1] * len(subjects.PRIORITIES)  # rings counted when pulled in this read
        top = len(subjects.PRIORITIES)  # the lowest priority that may be handed out, plus 1
        for pulls in range(MAX_PULLS_PER_READ + 1):
            bell.take_rings()
            got.sort(key=rank_of)
            worst = rank_of(got[limit - 1]) if len(got) >= limit else len(subjects.PRIORITIES)
            now = time.monotonic()
            rank = next((r for r in range(worst) if bell.may_have(r, pulled[r], now)), None)
            if rank is None:
                break
            if pulls == MAX_PULLS_PER_READ:  # still ringing: hand out nothing it could overtake
                top = rank + 1
                break
            pulled[rank] = bell.rings[rank]
            priority = subjects.PRIORITIES[rank]
            room = limit - sum(1 for d in got if rank_of(d) <= rank)
            msgs, short = await self._pulls.pull(agent_id, priority, room)
            bell.empty[rank] = (pulled[rank], now) if short else None
            fresh = await self._open_all(agent_id, priority, msgs)
            seqs = {d.item.seq for d in fresh}  # a held message the server sent again
            got = [d for d in got if d.item.seq not in seqs or d.item.priority != priority]
            got.extend(fresh)
        out = [d for d in got if rank_of(d) < top][:limit]
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
            self._doorbells[agent_id] = Bell(sub)
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

    async def close(self) -> None:
        await self._pulls.close()
        for bell in self._doorbells.values():
            for delivery in bell.held:  # pulled but never handed out: back to the mailbox now
                await delivery.msg.nak()
            await bell.sub.unsubscribe()
        self._doorbells.clear()

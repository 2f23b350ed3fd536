"""Moving mail nobody acked to `FLEET_MAIL_DLQ`, with a warning for people.

JetStream does not dead-letter by itself: when a consumer gives up on a message after
`max_deliver` deliveries it publishes an advisory on
`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>` (fields `stream_seq`,
`deliveries`) and leaves the message in the stream. This mover copies it to
`fleet.deadmail.<agent>.<priority>` (headers `Fleet-Mail-Seq`, `Fleet-Deliveries`), deletes it
from the work queue and publishes a `DeadLetterNotice` on `fleet.notify.warning`. The copy
carries `Nats-Msg-Id: dead-<seq>`, so a mover that runs twice stores it once.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from schemas import mail as m
from schemas import subjects
from schemas.errors import FleetError

log = logging.getLogger(__name__)

ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.MAIL_STREAM}.*"


class _Advisory(msgspec.Struct):
    stream: str = ""
    consumer: str = ""
    stream_seq: int = 0
    deliveries: int = 0


class DeadLetters:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.sub: Subscription | None = None
        self.moved = 0

    async def start(self) -> None:
        # A queue group: with several fleetd processes, each advisory is handled once.
        self.sub = await self.nc.subscribe(ADVISORY, queue="fleet-dead-letters", cb=self._on)
        await self.nc.flush()

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None

    async def _on(self, msg: Msg) -> None:
        try:
            advisory = msgspec.json.decode(msg.data, type=_Advisory)
            await self.move(advisory.stream_seq, advisory.deliveries)
        except (msgspec.DecodeError, FleetError) as e:
            log.warning("dead-letter advisory not handled: %s", e)
        except Exception:
            log.exception("dead-letter advisory not handled")

    async def move(self, seq: int, deliveries: int) -> bool:
        """Move stream message `seq` of FLEET_MAIL to the DLQ; False if it is already gone."""
        try:
            raw = await self.js.get_msg(subjects.MAIL_STREAM, seq)
        except NotFoundError:
            return False  # acked late, expired, or moved by another mover
        agent_id, priority = subjects.mail_of(raw.subject or "")
        headers = {
            "Nats-Msg-Id": f"dead-{seq}",
            "Fleet-Mail-Seq": str(seq),
            "Fleet-Deliveries": str(deliveries),
        }
        data = raw.data or b""
        ack = await self.js.publish(subjects.dead_mail(agent_id, priority), data, headers=headers)
        await self.js.delete_msg(subjects.MAIL_STREAM, seq)
        sender = ""
        with contextlib.suppress(FleetError):  # an unreadable message is dead-lettered all the same
            sender = m.decode(data).from_
        notice = m.DeadLetterNotice(
            agent_id=agent_id,
            priority=priority,
            from_=sender,
            seq=seq,
            dead_seq=ack.seq,
            deliveries=deliveries,
            message=(
                f"{priority} mail {seq} to {agent_id} from {sender or 'an unknown sender'} was "
                f"not acked after {deliveries} deliveries; moved to {subjects.MAIL_DLQ_STREAM}"
            ),
        )
        await self.nc.publish(subjects.notify("warning"), msgspec.json.encode(notice))
        self.moved += 1
        return True

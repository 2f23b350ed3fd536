"""A command request that outlives its responder's reconnect: the same bytes, sent again.

Core NATS keeps nothing for a subscriber that is not there: a request published while an
agent's actor is reconnecting (after a restart of nats-server the supervisor, whose
`fleet.cmd.*` fallback stays silent for known agents, may be back first) reaches nobody, and
its sender waited its whole timeout for a reply that could never come. So the request is
published again every `RESEND_S` to the same reply inbox until the first reply arrives.

That is safe because the actor makes copies one command: a copy of a command it is still
doing waits for that command's outcome, and a copy of one it did is answered `repeated`
(actors/agent/actor.py), both by the command's `id`; callers send writing commands with an id.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from schemas import subjects

RESEND_S = 2.0  # a request unanswered this long is sent again, until its timeout
_NO_RESPONDERS = "503"  # the Status header nats-server puts on "no one subscribes here"


async def request(
    nc: Client, subject: str, payload: bytes, timeout: float, *, resend_s: float = RESEND_S
) -> Msg:
    """The first reply to `payload` on `subject`, sent again while none came.

    Raises TimeoutError after `timeout` without a reply, NoRespondersError when nothing
    subscribes to `subject` at all. Each copy carries `Fleet-Timeout`, the time its sender
    still waits, so a busy agent answers `busy` while the sender listens."""
    loop = asyncio.get_running_loop()
    first: asyncio.Future[Msg] = loop.create_future()

    async def on_reply(msg: Msg) -> None:
        if not first.done():
            first.set_result(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            headers = {subjects.TIMEOUT_HEADER: f"{left:.3f}"}
            await nc.publish(subject, payload, reply=inbox, headers=headers)
            try:
                msg = await asyncio.wait_for(asyncio.shield(first), min(resend_s, left))
            except TimeoutError:
                continue
            if (msg.headers or {}).get("Status") == _NO_RESPONDERS and not msg.data:
                raise NoRespondersError
            return msg
    finally:
        await sub.unsubscribe()

"""The CLI's live view of a few agents' logs while a command waits (`fleet spawn`'s lines, the
spinner's steps): only what the stream stored, and of that only what verifies.

Read from the events stream (an ordered consumer per agent, from what is stored next), never
with a core subscription on `fleet.evt.<id>`, which also hands on publishes that JetStream
refused. Each event is checked with the fleet key of the state dir (its Fleet-Mac and its place
in the agent's chain, infra/eventfollow.py `LiveCheck`), so a message stored with the control
plane's credential, or an old signed event stored again, is refused (and logged), never shown.
Without the key nothing can be verified, so nothing is followed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from infra import fleetkey
from infra.config import Settings
from infra.eventfollow import LiveCheck, read_stream
from infra.eventscan import EventReader
from schemas import events as e
from schemas import subjects

_decoder = msgspec.json.Decoder(e.AgentEvent)


def fleet_key() -> bytes | None:
    return fleetkey.load_if_present(Settings.from_env().state_dir)


async def follow(
    nc: Client,
    agents: list[str],
    on_event: Callable[[e.AgentEvent], Awaitable[None] | None],
    name: str,
    key: bytes | None,
) -> list[Subscription]:
    """Hand `on_event` each verified event of `agents` stored from now on; the consumers, to
    be unsubscribed by the caller. Each exists when this returns, so a request made after it
    cannot cause an event that is missed. None are made without `key`."""
    if key is None:
        return []
    check = LiveCheck(EventReader(nc, mac_key=key), name)

    async def on_msg(msg: Msg) -> None:
        try:
            if not await check.passes_msg(msg):
                return  # refused, and logged by the check
        except Exception:  # noqa: BLE001 (the chain could not be read: not shown unchecked)
            return
        try:
            event = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            return  # a tag this CLI does not know yet; `fleet events` shows it
        done = on_event(event)
        if done is not None:
            await done

    js = nc.jetstream()
    return [
        await read_stream(js, on_msg, from_start=False, filter_subject=subjects.events(agent))
        for agent in agents
    ]

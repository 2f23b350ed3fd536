"""A command that cannot start in time is answered `busy`, with what the agent is doing,
never left without a reply; it changes nothing, and the same command later goes through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import ray
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.supervisor import AGENT_PREFIX
from infra.eventstore import EventStore
from schemas import subjects
from schemas.events import InputSent
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until


async def typed(nc: Client, agent_id: str) -> list[str]:
    """The text of every input.sent in the agent's log."""
    stored = await EventStore(nc).read(agent_id)
    return [s.event.text for s in stored if isinstance(s.event, InputSent)]


async def test_a_command_behind_a_slow_stop_is_answered_busy_and_does_nothing(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "b1"))["ok"]
    # A foreground job that ignores the polite quit and SIGTERM: the stop holds the agent's
    # lock through both of its timeouts (2 s each in the test fleet), until SIGKILL.
    await command(nc, "b1", "send", text="trap '' TERM HUP; sleep 1000")
    stop = asyncio.ensure_future(
        nc.request(subjects.command("b1"), b'{"type": "stop", "id": "stop-1"}', timeout=60)
    )

    async def stopping() -> bool:
        shown = await command(nc, "b1", "show")  # answered beside the lock
        return bool(shown["agent"]["lifecycle"] == "STOPPING")

    await until(stopping, "the stop to begin")
    late = b'{"type": "send", "text": "echo late", "id": "send-1"}'
    # The sender waits 10 s but says 0.5: the refusal comes well before its own timeout
    # (a TimeoutError here would be the silence this guards against).
    msg = await nc.request(
        subjects.command("b1"), late, timeout=10, headers={subjects.TIMEOUT_HEADER: "0.5"}
    )
    reply = msgspec.json.decode(msg.data)
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "busy"
    message = reply["error"]["message"]
    assert message.startswith("agent b1 is busy with stop"), message
    assert "so send did not start; nothing was done" in message, message
    # A copy of the stop (a sender bridging a reconnect sends the same id again) joins the
    # stop in progress: one stop, the same outcome for both.
    copy = await nc.request(subjects.command("b1"), b'{"type": "stop", "id": "stop-1"}', timeout=60)
    stopped = msgspec.json.decode((await stop).data)
    assert stopped["agent"]["lifecycle"] == "STOPPED", stopped
    copied = msgspec.json.decode(copy.data)
    # Joined while it ran (the same reply), or, on a machine slow enough that the stop was
    # over first, answered as a repeat: never a second stop.
    assert copied == stopped or (copied["repeated"] and copied["agent"] == stopped["agent"])
    lifecycle = [s.event for s in await EventStore(nc).read("b1") if s.event]
    assert [type(ev).__name__ for ev in lifecycle].count("SessionClosed") == 1
    assert await typed(nc, "b1") == [
        "trap '' TERM HUP; sleep 1000"
    ]  # the refused send left no trace


async def test_a_request_that_arrives_both_ways_is_done_once(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """After a NATS restart the supervisor hands a known agent's commands to its actor
    through Ray (the actor may not have been subscribed yet); when the actor got the same
    request on its own subscription too, the two copies are one command (no id was sent:
    the request's reply inbox names it)."""
    assert (await spawn(nc, str(repo), "d1"))["ok"]
    actor = ray.get_actor(AGENT_PREFIX + "d1", namespace=fleet.namespace)
    inbox = nc.new_inbox()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        await replies.put(msg.data)

    await nc.subscribe(inbox, cb=on_reply)
    data = b'{"type": "send", "text": "echo once"}'
    await nc.publish(subjects.command("d1"), data, reply=inbox)  # the actor's own copy
    handed = await actor.forwarded.remote(data, inbox, None)  # the supervisor's copy
    own = await asyncio.wait_for(replies.get(), 60)
    for reply in (msgspec.json.decode(own), msgspec.json.decode(handed)):
        assert reply["ok"] is True, reply
    assert await typed(nc, "d1") == ["echo once"]

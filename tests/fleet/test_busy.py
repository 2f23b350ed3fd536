"""A command that cannot start in time is answered `busy`, with what the agent is doing,
never left without a reply; it changes nothing, and the same command later goes through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from nats.aio.client import Client

from infra.eventstore import EventStore
from schemas import subjects
from schemas.events import InputSent
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until


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
    typed = [
        s.event.text for s in await EventStore(nc).read("b1") if isinstance(s.event, InputSent)
    ]
    assert typed == ["trap '' TERM HUP; sleep 1000"]  # the refused send left no trace

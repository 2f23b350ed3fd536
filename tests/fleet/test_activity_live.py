"""Activity detection inside a real agent: the fake assistant's screens become events."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from nats.aio.client import Client

from infra.eventstore import EventStore
from schemas.events import ActivityChanged, LifecycleChanged
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until

FAKE = Path(__file__).resolve().parents[1] / "fake_assistant.py"


def fake(who: str, script: str) -> str:
    return shlex.join([sys.executable, str(FAKE), "--as", who, "--script", script])


async def activities(nc: Client, agent_id: str) -> list[tuple[str, str]]:
    stored = await EventStore(nc).read(agent_id)
    return [
        (s.event.to.value, s.event.detail) for s in stored if isinstance(s.event, ActivityChanged)
    ]


async def test_claude_codes_screens_become_activity_events(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    reply = await spawn(
        nc, str(repo), "cc1", template="claude-code", command=fake("claude", "work:6,ask")
    )
    assert reply["ok"], reply

    async def asking() -> list[tuple[str, str]]:
        seen = await activities(nc, "cc1")
        return seen if seen and seen[-1][0] == "AWAITING_INPUT" else []

    # Six seconds of work: on a loaded machine the monitor, debounced, missed a one-second one.
    seen = await until(asking, "the question to be recorded as AWAITING_INPUT", timeout=120)
    assert ("WORKING", "") in seen
    assert "proceed" in seen[-1][1].lower()  # what the agent asks, for the notification
    shown = await command(nc, "cc1", "show")
    assert shown["agent"]["activity"] == "AWAITING_INPUT"
    await command(nc, "cc1", "send", text="y")

    async def working_again() -> bool:
        return (await activities(nc, "cc1"))[-1][0] in ("WORKING", "READY")

    await until(working_again, "the answer to move it on", timeout=120)


async def test_an_assistant_that_exits_puts_the_agent_in_error(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    await spawn(nc, str(repo), "ex1", command="sh -c 'sleep 0.5; exit 3'")

    async def failed() -> dict | None:
        shown = (await command(nc, "ex1", "show"))["agent"]
        return shown if shown["lifecycle"] == "ERROR" else None

    shown = await until(failed, "the exit to be noticed", timeout=60)
    assert "exited with status 3" in shown["reason"]
    stored = await EventStore(nc).read("ex1")
    assert isinstance(stored[-1].event, LifecycleChanged) and stored[-1].event.to.value == "ERROR"


async def test_an_assistant_that_exits_is_recorded_with_its_last_words(
    fleet: Fleet,
    nc: Client,
    repo: Path,
) -> None:
    """Claude Code exits at its first-run check with a screen that says why; the reason says
    it too, not only the status."""
    said = "echo Unable to connect to Anthropic services; echo Failed to connect: ENOTFOUND"
    await spawn(nc, str(repo), "ex2", command=f"sh -c '{said}; sleep 0.5; exit 1'")

    async def failed() -> dict | None:
        shown = (await command(nc, "ex2", "show"))["agent"]
        return shown if shown["lifecycle"] == "ERROR" else None

    shown = await until(failed, "the exit to be noticed", timeout=60)
    assert shown["reason"] == (
        "the assistant exited with status 1: "
        "Unable to connect to Anthropic services / Failed to connect: ENOTFOUND"
    ), shown["reason"]

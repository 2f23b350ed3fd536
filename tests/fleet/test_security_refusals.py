"""Bad input through real NATS to the supervisor and an agent: one sentence, nothing made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from infra.eventstore import EventStore
from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import spawn


async def ask(nc: Client, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subject, msgspec.json.encode(body), 10)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


@pytest.mark.parametrize(
    ("fields", "starts"),
    [
        ({"name": "a.b"}, "invalid agent name 'a.b'"),
        ({"name": "x;rm"}, "invalid agent name 'x;rm'"),
        ({"name": "ok1", "repo": "../repo"}, "invalid repo path '../repo'"),
        ({"name": "ok2", "base_ref": "--upload-pack=x"}, "invalid base ref"),
        ({"name": "ok3", "env": {"A B": "1"}}, "invalid spawn env variable name 'A B'"),
        ({"name": "ok4", "command": "x" * 70_000}, "spawn request is 7"),
    ],
)
async def test_the_supervisor_refuses_bad_spawns_and_makes_nothing(
    fleet: Fleet, nc: Client, repo: Path, fields: dict[str, Any], starts: str
) -> None:
    reply = await ask(nc, subjects.control("spawn"), {"repo": str(repo), **fields})
    assert reply["ok"] is False and reply["error"]["message"].startswith(starts), reply
    assert await EventStore(nc).agents() == []  # nothing logged
    assert not fleet.worktree_root.exists() or list(fleet.worktree_root.iterdir()) == []


async def test_an_agent_refuses_bad_commands_and_logs_nothing(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "v1"))["ok"]
    store = EventStore(nc)
    before = len(await store.read("v1"))
    for body, starts in (
        ({"type": "checkpoint", "label": "a\nb"}, "invalid checkpoint label"),
        ({"type": "attach", "user": "$(id)"}, "invalid user '$(id)'"),
        ({"type": "send", "keys": ["C-c;ls"]}, "invalid key name"),
        ({"type": "restart_service", "service": "a.*"}, "invalid service name"),
    ):
        reply = await ask(nc, subjects.command("v1"), body)
        assert reply["ok"] is False and reply["error"]["message"].startswith(starts), reply
    assert len(await store.read("v1")) == before

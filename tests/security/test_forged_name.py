"""A message stored on `fleet.evt.<name>` before any agent of that name exists (published with
the control plane's credential, no Fleet-Mac) takes no name: a spawn of that name makes the
agent, the forgery is refused as every reader refuses it (never folded: its `workspace.ready`
pointing at the state dir gives the agent nothing), and the agent's own events follow it.
Before, the supervisor counted any stored message as an agent and refused the spawn with
"already exists". A name that an agent's actor did sign is still taken.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.client import Client

from infra import fleetkey
from infra.eventstore import EventStore
from schemas import events as e
from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn


async def forge(nc: Client, name: str, path: Path) -> int:
    """A `workspace.ready` on `name`'s log as a leaked credential would store it; its seq."""
    forged = e.WorkspaceReady(
        agent_id=name, event_id=uuid.uuid4().hex, at=datetime.now(UTC),
        path=str(path), branch=f"fleet/{name}",
    )  # fmt: skip
    ack = await nc.jetstream().publish(subjects.events(name), msgspec.json.encode(forged))
    return ack.seq


async def test_a_forgery_before_the_first_spawn_takes_no_name(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    seq = await forge(nc, "fn1", fleet.state_dir)

    made = await spawn(nc, str(repo), "fn1", template="shell")

    assert made["ok"] and made["agent"]["lifecycle"] == "RUNNING", made
    worktree = made["agent"]["worktree"]
    assert worktree != str(fleet.state_dir) and Path(worktree).is_dir(), made
    store = EventStore(nc, mac_key=fleetkey.load(fleet.state_dir))
    loaded = await store.load("fn1")
    assert [r.seq for r in loaded.refused] == [seq], loaded.refused  # refused, reported
    assert loaded.state.worktree == worktree and loaded.position.seq > seq
    assert (await command(nc, "fn1", "pause")).get("ok")  # its actor writes on, checked
    assert (await command(nc, "fn1", "resume")).get("ok")
    again = await spawn(nc, str(repo), "fn1", template="shell")  # now an agent has the name
    assert again["ok"] is False and again["error"]["code"] == "agent_exists", again
    await command(nc, "fn1", "kill")


async def test_a_refused_spawn_over_a_forgery_leaves_no_agent(
    fleet: Fleet, nc: Client, repo: Path, tmp_path: Path
) -> None:
    await forge(nc, "fn2", fleet.state_dir)
    plain = tmp_path / "not-a-repo"
    plain.mkdir()

    refused = await spawn(nc, str(plain), "fn2")

    assert refused["ok"] is False and "not a git repository" in refused["error"]["message"]
    listed = await request(nc, subjects.control("list"), {}, timeout=30)
    assert "fn2" not in [a["id"] for a in listed["agents"]], listed  # no actor kept for it
    shown = await command(nc, "fn2", "show", timeout=30)
    assert shown["error"]["code"] == "unknown_agent", shown
    made = await spawn(nc, str(repo), "fn2", template="shell")  # the name is still free
    assert made["ok"] and made["agent"]["lifecycle"] == "RUNNING", made
    await command(nc, "fn2", "kill")

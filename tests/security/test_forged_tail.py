"""A message stored on an agent's `fleet.evt.<id>` with the control plane's credential (no
Fleet-Mac) does not cost the agent a command: its actor's next append meets the forgery,
refuses it as every reader does, and carries on from its own last event. Before, that first
command failed with a concurrent-update error and only the one after it worked.
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
from schemas.chain import event_hash
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn


async def test_the_next_command_after_a_forged_tail_succeeds(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    spawned = await spawn(nc, str(repo), "ft1")
    assert spawned["ok"], spawned
    rows = await EventStore(nc).read("ft1")
    forged = e.WorkspaceReady(
        agent_id="ft1", event_id=uuid.uuid4().hex, at=datetime.now(UTC),
        path=str(fleet.state_dir), branch="fleet/ft1", prev_hash=event_hash(rows[-1].raw),
    )  # fmt: skip
    headers = {"Nats-Expected-Last-Subject-Sequence": str(rows[-1].seq)}
    ack = await nc.jetstream().publish(
        subjects.events("ft1"), msgspec.json.encode(forged), headers=headers
    )

    paused = await command(nc, "ft1", "pause")  # the first command after it, once

    assert paused.get("ok"), paused
    assert (await command(nc, "ft1", "resume")).get("ok")
    store = EventStore(nc, mac_key=fleetkey.load(fleet.state_dir))
    loaded = await store.load("ft1")
    assert [r.seq for r in loaded.refused] == [ack.seq]
    assert loaded.state.worktree == spawned["agent"]["worktree"]
    assert loaded.position.seq > ack.seq  # its own events follow the forgery


async def test_a_rollback_after_a_forged_workspace_acts_on_the_agents_own(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """Issue 14, item 4: a forged `workspace.ready` naming another agent's worktree made a
    rollback delete that agent's files. Now it is refused: the rollback works on the
    agent's own worktree and the other agent's files are as they were."""
    victim = await spawn(nc, str(repo), "ftv")
    target = await spawn(nc, str(repo), "fta")
    assert victim["ok"] and target["ok"], (victim, target)
    theirs, mine = Path(victim["agent"]["worktree"]), Path(target["agent"]["worktree"])
    (theirs / "their-work.txt").write_text("the victim's\n")
    (mine / "work.txt").write_text("v1\n")
    taken = await command(nc, "fta", "checkpoint", label="one")
    assert taken["ok"], taken
    rows = await EventStore(nc).read("fta")
    forged = e.WorkspaceReady(
        agent_id="fta", event_id=uuid.uuid4().hex, at=datetime.now(UTC),
        path=str(theirs), branch="fleet/fta", prev_hash=event_hash(rows[-1].raw),
    )  # fmt: skip
    headers = {"Nats-Expected-Last-Subject-Sequence": str(rows[-1].seq)}
    await nc.jetstream().publish(
        subjects.events("fta"), msgspec.json.encode(forged), headers=headers
    )
    (mine / "work.txt").write_text("v2\n")

    back = await command(nc, "fta", "rollback", checkpoint=taken["checkpoint"], timeout=120)

    assert back["ok"], back
    assert (mine / "work.txt").read_text() == "v1\n"  # its own worktree, rolled back
    assert (theirs / "their-work.txt").read_text() == "the victim's\n"  # the victim's, untouched
    for name in ("ftv", "fta"):
        await command(nc, name, "kill")

"""Checkpoints, rollback and audits against real Ray, nats-server, tmux and git."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.client import Client

from infra import fleetkey, treestat
from infra.eventstore import EventStore
from infra.nats import connect
from schemas import events as e
from schemas import subjects
from schemas.agent import evolve
from schemas.audit import MAC_HEADER, event_mac, restored_view
from schemas.chain import event_hash
from services import auditor
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn


def git(where: Path, *args: str) -> str:
    # safe.directory: the agent's repository is its own user's (tests run as root)
    done = subprocess.run(
        ["git", "-c", "safe.directory=*", *args],
        cwd=where, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def fleet_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=fleet.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_rollback_restores_files_state_and_can_be_undone(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    reply = await spawn(nc, str(repo), "a1")
    assert reply["ok"], reply
    wt = Path(reply["agent"]["worktree"])
    start = git(wt, "rev-parse", "HEAD")
    (wt / "keep.txt").write_text("v1\n")  # untracked work is checkpointed too

    taken = await command(nc, "a1", "checkpoint", label="one")
    assert taken["ok"], taken
    assert taken["checkpoint"] == 1
    assert git(wt, "rev-parse", "HEAD") == start  # the branch did not move
    assert git(wt, "status", "--porcelain") == "?? keep.txt"  # nor the index
    ref = git(repo, "rev-parse", "refs/fleet/checkpoints/a1/1")  # in the user's repository
    assert ref == taken["commit"]
    assert git(wt, "show", f"{ref}:keep.txt") == "v1"

    # Work after the checkpoint: a new file, a deletion, an edit, a commit, an ignored file.
    (wt / "later.txt").write_text("later\n")
    (wt / "README.md").unlink()
    (wt / "keep.txt").write_text("v2\n")
    (wt / "committed.txt").write_text("c\n")
    git(wt, "add", "committed.txt")
    git(wt, "commit", "-qm", "after the checkpoint")
    later_head = git(wt, "rev-parse", "HEAD")
    (wt / "build.log").write_text("ignored\n")

    back = await command(nc, "a1", "rollback", checkpoint=1)
    assert back["ok"], back
    assert back["saved_checkpoint"] == 2
    assert not (wt / "later.txt").exists()
    assert not (wt / "committed.txt").exists()
    assert (wt / "README.md").read_text() == "hello\n"
    assert (wt / "keep.txt").read_text() == "v1\n"
    assert (wt / "build.log").read_text() == "ignored\n"  # ignored files are kept
    assert git(wt, "rev-parse", "HEAD") == start  # the branch is back where it was then
    assert git(wt, "status", "--porcelain") == "?? keep.txt"
    owner = wt.stat().st_uid  # the agent's own user when fleetd is root: files written are its
    files = [p for p in wt.rglob("*") if ".git" not in p.relative_to(wt).parts]
    assert {p.lstat().st_uid for p in files} == {owner}

    store = EventStore(nc)
    rows = await store.read("a1")
    last = rows[-1].event
    assert isinstance(last, e.RolledBack)
    assert (last.checkpoint, last.commit, last.saved_checkpoint) == (1, taken["commit"], 2)
    full = (await store.replay("a1")).state
    then = (await store.replay("a1", upto=last.to_seq)).state
    assert restored_view(full) == restored_view(evolve(then, last))
    assert full.head == taken["commit"]
    assert [cp.auto for cp in full.checkpoints] == ["", "rollback"]
    shown = (await command(nc, "a1", "show"))["agent"]
    assert shown["lifecycle"] == "RUNNING"
    assert shown["seq"] == rows[-1].seq  # the live actor stands where the replay ends

    undo = await command(nc, "a1", "rollback", checkpoint=2)
    assert undo["ok"], undo
    assert (wt / "later.txt").read_text() == "later\n"
    assert (wt / "committed.txt").read_text() == "c\n"
    assert not (wt / "README.md").exists()
    assert (wt / "keep.txt").read_text() == "v2\n"
    assert git(wt, "rev-parse", "HEAD") == later_head

    scrollback = Path(fleet.state_dir, "checkpoints", "a1", "1.txt")
    assert scrollback.exists()


async def test_cli_checkpoint_list_rollback_and_stop_checkpoint(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "c1"))["ok"]
    done = fleet_cli(fleet, "checkpoint", "c1", "-m", "first try", "--json")
    assert done.returncode == 0, done.stderr
    assert msgspec.json.decode(done.stdout)["checkpoint"] == 1
    listed = fleet_cli(fleet, "checkpoints", "c1")
    assert "first try" in listed.stdout and "#1" in listed.stdout, listed
    back = fleet_cli(fleet, "rollback", "c1", "1", "--json")
    assert back.returncode == 0, back.stderr
    assert msgspec.json.decode(back.stdout)["saved_checkpoint"] == 2
    missing = fleet_cli(fleet, "rollback", "c1", "9")
    assert missing.returncode == 2 and "no checkpoint 9" in missing.stderr
    assert (await command(nc, "c1", "stop"))["ok"]
    listed = msgspec.json.decode(fleet_cli(fleet, "checkpoints", "c1", "--json").stdout)
    assert [cp["auto"] for cp in listed] == ["", "rollback", "stop"]


async def test_audit_passes_an_honest_log_and_catches_forged_and_altered_events(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "f1"))["ok"]
    assert (await command(nc, "f1", "checkpoint", label="x"))["ok"]
    assert (await command(nc, "f1", "pause"))["ok"]
    assert (await command(nc, "f1", "resume"))["ok"]
    key = fleetkey.load(fleet.state_dir)
    store = EventStore(nc)
    honest = await auditor.audit_agent(store, "f1", auditor.AuditOptions(key=key))
    assert honest.ok, honest.violations
    ok = fleet_cli(fleet, "audit", "f1", "--verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    timeline = fleet_cli(fleet, "audit", "f1", "--at", "3")
    assert "checkpoint.taken" not in timeline.stdout and "as of 3:" in timeline.stdout

    # A forger who can publish computes a correct prev_hash, but cannot sign.
    rows = await store.read("f1")
    forged = e.InputSent(
        agent_id="f1",
        event_id="forged-1",
        at=datetime.now(UTC),
        text="rm -rf /",
        prev_hash=event_hash(rows[-1].raw),
    )
    raw = msgspec.json.encode(forged)
    ack = await nc.jetstream().publish(subjects.events("f1"), raw)
    bad = fleet_cli(fleet, "audit", "f1", "--verify")
    assert bad.returncode == 3
    assert f"sequence {ack.seq}: no Fleet-Mac" in bad.stderr, bad.stderr

    # An altered event (here: signed with the key, but naming a wrong prev_hash).
    altered = msgspec.structs.replace(forged, event_id="altered-1", prev_hash="0" * 32)
    raw2 = msgspec.json.encode(altered)
    headers = {MAC_HEADER: event_mac(key, raw2)}
    ack2 = await nc.jetstream().publish(subjects.events("f1"), raw2, headers=headers)
    bad = fleet_cli(fleet, "audit", "f1", "--verify", "--json")
    assert bad.returncode == 3
    found = msgspec.json.decode(bad.stdout)
    problems = {(v["seq"], v["problem"].split(":")[0]) for v in found["violations"]}
    assert (ack.seq, "no Fleet-Mac") in problems
    assert any(seq == ack2.seq and p.startswith("prev_hash") for seq, p in problems), problems
    everyone = fleet_cli(fleet, "audit", "--all", "--verify", "--nats-url", fleet.nats_url)
    assert everyone.returncode == 3 and f"sequence {ack2.seq}" in everyone.stderr


async def test_random_histories_round_trip_through_the_real_store(nats_url: str) -> None:
    """Random command histories, recorded as the actor records them, replay to the live state
    and pass the audit (the decide/evolve level is covered by tests/unit/test_audit.py)."""
    import random
    import uuid

    from infra.nats import ensure_streams
    from schemas import commands as c
    from schemas.agent import decide, initial
    from schemas.chain import Position
    from schemas.errors import FleetError
    from schemas.states import Activity

    client = await connect(nats_url)
    try:
        await ensure_streams(client.jetstream())
        key = b"r" * 32
        store = EventStore(client, mac_key=key, snapshot_every=7)
        choices: list[c.AgentCommand] = [
            c.MarkRunning(), c.Pause(), c.Resume(), c.Stop(), c.MarkStopped(), c.Restart(),
            c.Send(text="hi"), c.Attach(user="ada"), c.Detach(user="ada"), c.Fail(reason="x"),
            *(c.ObserveActivity(activity=a) for a in Activity),
        ]  # fmt: skip
        for n in range(5):
            rng, agent = random.Random(n), f"h{n}"
            state, pos = initial(agent), Position()
            for cmd in [c.Create(name=agent), *(rng.choice(choices) for _ in range(60))]:
                try:
                    events = decide(
                        state, cmd, now=datetime.now(UTC), new_id=lambda: uuid.uuid4().hex
                    )
                except FleetError:
                    continue
                state, pos = await store.record(state, events, pos)
            assert (await store.replay(agent)).state == state
            assert (await store.load(agent)).state == state  # snapshot + tail, too
            audit = await auditor.audit_agent(store, agent, auditor.AuditOptions(key=key))
            assert audit.ok, audit.violations
            assert audit.state == state and audit.last_seq == pos.seq
    finally:
        await client.close()


async def test_a_stop_with_nothing_changed_names_the_checkout_or_the_last_checkpoint(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """A stop's checkpoint with the folder untouched since the spawn (or since the last
    checkpoint) runs no jailed git (the jail keeps no index), yet holds what a save would; a
    change, even one keeping the size and mtime, is saved."""
    base = git(repo, "rev-parse", "HEAD")
    folder = Path(fleet.state_dir, "checkpoints", "u1")
    kept = [folder / "git" / "index", folder / "index"]  # jailed, unjailed
    assert (await spawn(nc, str(repo), "u1"))["ok"]
    assert (await command(nc, "u1", "stop"))["ok"]
    stop_1 = git(repo, "rev-parse", "refs/fleet/checkpoints/u1/1")
    assert git(repo, "rev-parse", f"{stop_1}^{{tree}}") == git(repo, "rev-parse", "HEAD^{tree}")
    assert git(repo, "rev-parse", f"{stop_1}^") == base
    assert not any(k.exists() for k in kept)  # no git read the files

    reply = await spawn(nc, str(repo), "u2")
    wt = Path(reply["agent"]["worktree"])
    (wt / "work.txt").write_text("work\n")
    # A fingerprint is kept only of a folder whose entries are all QUIET_S old (the spawn's
    # hand-over changed every ctime): until then a checkpoint keeps none and a stop saves.
    await asyncio.sleep(treestat.QUIET_S + 0.5)
    taken = await command(nc, "u2", "checkpoint", label="mine")
    assert (await command(nc, "u2", "stop"))["ok"]
    assert git(repo, "rev-parse", "refs/fleet/checkpoints/u2/2") == taken["commit"]

    reply = await spawn(nc, str(repo), "u3")
    wt = Path(reply["agent"]["worktree"])
    readme = wt / "README.md"
    before = readme.stat()
    readme.write_bytes(bytes(reversed(readme.read_bytes())))  # same size
    os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: ctime moved
    assert (await command(nc, "u3", "stop"))["ok"]
    saved = git(repo, "show", "refs/fleet/checkpoints/u3/1:README.md")
    assert saved == readme.read_text().strip()

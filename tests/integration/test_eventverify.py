"""The event store and the stream's readers with the fleet key, against a real nats-server:
an event or snapshot its actor did not write is refused, reported, and never folded."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.supervisor.fleetview import FleetView
from infra.eventfollow import LiveCheck, read_stream
from infra.eventstore import EventStore, Stored
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from schemas import commands as c
from schemas import events as e
from schemas import subjects
from schemas.agent import AgentState, decide, initial
from schemas.audit import MAC_HEADER, audit_events, event_mac
from schemas.chain import Position, Snapshot
from schemas.eventcheck import Refusal
from schemas.states import Activity
from tests.fleet.helpers import until

KEY = b"f" * 32
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
_ids = itertools.count()


def run(state: AgentState, cmd: c.AgentCommand) -> list[e.AgentEvent]:
    return decide(state, cmd, now=NOW, new_id=lambda: f"ev-{next(_ids)}")


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await connect(nats_server.url)
    await ensure_streams(nc.jetstream())
    try:
        yield nc
    finally:
        await nc.close()


async def spawned(store: EventStore, agent_id: str = "a1") -> tuple[AgentState, Position]:
    state, pos = initial(agent_id), Position()
    state, pos = await store.record(state, run(state, c.Create(name=agent_id)), pos)
    return await store.record(state, run(state, c.MarkRunning()), pos)


def forged_ready(agent_id: str, prev_hash: str, path: str = "/var/lib/fleetd") -> bytes:
    """What an attacker would append: a perfect chain link, but no fleet key."""
    event = e.WorkspaceReady(
        agent_id=agent_id, event_id="forged", at=NOW, path=path, branch="x", prev_hash=prev_hash
    )
    return msgspec.json.encode(event)


async def inject(nc: Client, agent_id: str, raw: bytes, mac: str = "") -> int:
    """A publish with the control plane's credential (a leaked one): stored as is."""
    headers = {MAC_HEADER: mac} if mac else None
    ack = await nc.jetstream().publish(subjects.events(agent_id), raw, headers=headers)
    return ack.seq


async def test_a_forged_event_is_refused_by_a_load_and_the_actor_appends_after_it(
    nc: Client,
) -> None:
    store = EventStore(nc, mac_key=KEY, snapshot_every=1000)
    state, pos = await spawned(store)
    forged = await inject(nc, "a1", forged_ready("a1", pos.hash))
    loaded = await store.load("a1")
    assert loaded.state == state  # the forged worktree is nowhere
    assert [(r.agent_id, r.seq) for r in loaded.refused] == [("a1", forged)]
    assert "no Fleet-Mac" in loaded.refused[0].problem
    assert loaded.position == Position(forged, pos.hash)  # append after it, chain to the last
    act = run(loaded.state, c.ObserveActivity(activity=Activity.WORKING))
    state, pos = await store.record(loaded.state, act, loaded.position)
    again = await store.load("a1")
    assert again.state == state and again.position == pos
    assert [r.seq for r in again.refused] == [forged]
    # an old signed event stored again (a replay with a leaked credential) is refused too
    first = (await EventStore(nc).read("a1"))[0]
    replayed = await inject(nc, "a1", first.raw, first.mac)
    assert "prev_hash" in (await store.load("a1")).refused[-1].problem
    assert (await store.load("a1")).refused[-1].seq == replayed
    # the audit still reads every stored row and says what is wrong
    rows = [(s.seq, s.raw, s.mac) for s in await EventStore(nc).read("a1")]
    problems = [v.problem for v in audit_events("a1", rows, KEY).violations]
    assert any("no Fleet-Mac" in p for p in problems)


async def test_read_refuses_and_names_what_does_not_verify(nc: Client) -> None:
    store = EventStore(nc, mac_key=KEY)
    state, pos = await spawned(store)
    forged = await inject(nc, "a1", forged_ready("a1", pos.hash))
    state, pos = await store.record(state, run(state, c.Pause()), Position(forged, pos.hash))
    rows, refused = await store.read_checked("a1")
    assert forged not in [r.seq for r in rows] and [r.seq for r in refused] == [forged]
    tail, refused = await store.read_checked("a1", after=forged)  # takes up the chain there
    assert [r.seq for r in tail] == [pos.seq] and refused == []
    assert [r.seq for r in await EventStore(nc).read("a1")][-2:] == [forged, pos.seq]


async def test_a_snapshot_its_actor_did_not_sign_is_ignored(nc: Client) -> None:
    store = EventStore(nc, mac_key=KEY, snapshot_every=2)
    state, pos = await spawned(store)
    assert await store.read_snapshot("a1") is not None  # its own snapshot verifies
    lie = msgspec.structs.replace(state, worktree="/var/lib/fleetd")
    kv = await nc.jetstream().key_value(subjects.SNAPSHOTS_BUCKET)
    await kv.put("a1", msgspec.json.encode(Snapshot(state=lie, position=pos)))
    assert await store.read_snapshot("a1") is None
    assert (await store.load("a1")).state == state  # replayed from the log instead
    # signed, but another agent's: not a1's snapshot either
    other, _ = await spawned(store, "b1")
    raw = msgspec.json.encode(Snapshot(state=other, position=pos))
    headers = {MAC_HEADER: event_mac(KEY, raw)}
    await nc.jetstream().publish(f"$KV.{subjects.SNAPSHOTS_BUCKET}.a1", raw, headers=headers)
    assert await store.read_snapshot("a1") is None
    assert (await store.load("a1")).state == state


async def test_a_follower_hands_on_only_verified_events_and_reports_the_rest(nc: Client) -> None:
    store = EventStore(nc, mac_key=KEY)
    state, pos = await spawned(store)
    forged = await inject(nc, "a1", forged_ready("a1", pos.hash))
    state, pos = await store.record(state, run(state, c.Pause()), Position(forged, pos.hash))
    got: list[Stored] = []
    refused: list[Refusal] = []
    stop = asyncio.Event()

    async def handler(stored: Stored) -> None:
        got.append(stored)

    async def on_refused(refusal: Refusal) -> None:
        refused.append(refusal)

    follower = asyncio.create_task(store.follow("t1", handler, stop=stop, on_refused=on_refused))

    async def all_seen() -> bool:
        return len(got) + len(refused) >= pos.seq

    await until(all_seen, "the follower to read every stored event", 30)
    stop.set()
    await asyncio.wait_for(follower, 30)
    assert forged not in [s.seq for s in got] and [r.seq for r in refused] == [forged]
    assert got[-1].seq == pos.seq

    # one that starts after the forgery takes up the chain where the log stands
    state, pos = await store.record(state, run(state, c.Resume()), pos)
    late = EventStore(nc, mac_key=KEY)
    check = LiveCheck(late, "late reader")
    seen: list[int] = []

    async def on_msg(msg: Msg) -> None:
        if await check.passes_msg(msg):
            seen.append(msg.metadata.sequence.stream)

    sub = await read_stream(nc.jetstream(), on_msg, from_start=False)
    state, pos = await store.record(state, run(state, c.Pause()), pos)
    await inject(nc, "a1", forged_ready("a1", pos.hash))

    async def two() -> bool:
        return bool(seen) and check.refused == 1

    await until(two, "the live reader to pass the pause and refuse the forgery", 30)
    assert seen == [pos.seq]
    await sub.unsubscribe()


async def test_the_fleet_view_folds_only_what_verifies(nc: Client) -> None:
    store = EventStore(nc, mac_key=KEY)
    state, pos = await spawned(store)
    await inject(nc, "a1", forged_ready("a1", pos.hash))
    view = FleetView(nc, KEY)
    await view.start()
    try:
        assert await view.caught_up()
        assert view.states["a1"] == state and view.check.refused == 1
    finally:
        await view.close()

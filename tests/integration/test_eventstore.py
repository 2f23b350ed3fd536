"""The event store against a real nats-server: races, retries, crashes, snapshots, bad bytes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from infra.eventstore import EventStore, Stored
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from schemas import commands as c
from schemas import subjects
from schemas.agent import AgentState, decide, evolve, fold, initial
from schemas.chain import Position, event_hash
from schemas.errors import ConcurrentUpdate, StoreUnavailable
from schemas.events import AgentEvent
from schemas.states import Activity, Lifecycle

_ids = itertools.count()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def new_id() -> str:
    return f"ev-{next(_ids)}"


def run(state: AgentState, cmd: c.AgentCommand) -> list[AgentEvent]:
    return decide(state, cmd, now=NOW, new_id=new_id)


@pytest.fixture
async def store(nats_server: NatsServer) -> AsyncIterator[EventStore]:
    nc = await connect(nats_server.url)
    await ensure_streams(nc.jetstream())
    try:
        yield EventStore(nc, snapshot_every=7)
    finally:
        await nc.close()


async def spawned(store: EventStore, agent_id: str = "a1") -> tuple[AgentState, Position]:
    state, pos = initial(agent_id), Position()
    state, pos = await store.record(state, run(state, c.Create(name=agent_id)), pos)
    return await store.record(state, run(state, c.MarkRunning()), pos)


async def flip_activity(
    store: EventStore, state: AgentState, pos: Position, times: int
) -> tuple[AgentState, Position]:
    for i in range(times):
        act = Activity.WORKING if i % 2 == 0 else Activity.READY
        state, pos = await store.record(state, run(state, c.ObserveActivity(activity=act)), pos)
    return state, pos


async def test_two_writers_race_and_exactly_one_wins(store: EventStore) -> None:
    state, pos = await spawned(store)
    pause = run(state, c.Pause())
    stop = run(state, c.Stop())
    results = await asyncio.gather(
        store.append("a1", pause, pos), store.append("a1", stop, pos), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, Position)]
    losses = [r for r in results if isinstance(r, ConcurrentUpdate)]
    assert len(wins) == 1 and len(losses) == 1
    assert "a1" in str(losses[0])
    loaded = await store.load("a1")
    assert loaded.state.lifecycle in (Lifecycle.PAUSED, Lifecycle.STOPPING)
    assert loaded.state.events == 4  # created, spawning, running, and one of the two
    assert loaded.position == wins[0]


async def test_a_stale_writer_is_refused_after_the_log_moved(store: EventStore) -> None:
    state, pos = await spawned(store)
    await store.append("a1", run(state, c.Pause()), pos)
    with pytest.raises(ConcurrentUpdate, match="moved past sequence"):
        await store.append("a1", run(state, c.Stop()), pos)


async def test_a_retried_append_is_stored_once(store: EventStore) -> None:
    state, pos = await spawned(store)
    events = run(state, c.Stop()) + run(state, c.Send(text="hi"))
    first = await store.append("a1", events, pos)
    again = await store.append("a1", events, pos)  # the acknowledgement was "lost"
    assert again == first
    partly = await store.append("a1", events[:1], pos)  # stored, then the rest retried
    assert partly.seq < first.seq
    assert await store.append("a1", events, pos) == first
    loaded = await store.load("a1")
    assert loaded.state.events == 5


async def test_every_event_names_the_hash_of_the_one_before(store: EventStore) -> None:
    state, pos = await spawned(store)
    await flip_activity(store, state, pos, 5)
    stored = await store.read("a1")
    assert [s.event.prev_hash for s in stored if s.event] == [""] + [
        event_hash(s.raw) for s in stored[:-1]
    ]


async def test_acknowledged_events_survive_kill_9_of_the_server(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, reconnect=False)
    await ensure_streams(nc.jetstream())
    store = EventStore(nc)
    state, pos = await spawned(store)
    state, pos = await flip_activity(store, state, pos, 40)
    await nc.close()
    nats_server.kill()
    nats_server.restart()
    nc = await connect(nats_server.url)
    try:
        loaded = await EventStore(nc).load("a1")
        assert loaded.state == state
        assert loaded.position == pos
    finally:
        await nc.close()


async def test_snapshot_plus_tail_equals_the_full_fold(store: EventStore) -> None:
    state, pos = await spawned(store)
    state, pos = await flip_activity(store, state, pos, 30)
    snapshot = await store.read_snapshot("a1")
    assert snapshot is not None and 0 < snapshot.position.seq < pos.seq  # a tail remains
    from_snapshot = await store.load("a1")
    full = await store.replay("a1")
    assert from_snapshot.state == full.state == state
    assert from_snapshot.position == full.position == pos
    events = [s.event for s in await store.read("a1") if s.event]
    assert fold(events) == state


async def test_a_long_log_replays_through_the_consumer_path(store: EventStore) -> None:
    state, pos = await spawned(store)
    state, pos = await flip_activity(store, state, pos, 260)  # past the direct-get tail
    full = await store.replay("a1")
    assert full.state == state and full.position == pos
    upto = await store.replay("a1", upto=150)
    assert upto.state.events == 150 and upto.position.seq == 150
    assert upto.state == fold(s.event for s in (await store.read("a1"))[:150] if s.event)


async def test_undecodable_bytes_and_unknown_tags_are_reported_and_skipped(
    store: EventStore,
) -> None:
    state, pos = await spawned(store)
    js = store.nc.jetstream()
    junk = await js.publish(subjects.events("a1"), b"\xff not json")
    future = msgspec.json.encode({"type": "agent.teleported", "agent_id": "a1"})
    odd = await js.publish(subjects.events("a1"), future)
    state, pos = await store.record(state, run(state, c.Pause()), await _position(store))
    loaded = await store.load("a1")
    assert [s.seq for s in loaded.skipped] == [junk.seq, odd.seq]
    assert all(s.problem for s in loaded.skipped)
    assert loaded.state.lifecycle is Lifecycle.PAUSED
    assert loaded.position == pos


async def _stopped(pid: int) -> None:
    """Until every thread of `pid` is stopped: a SIGSTOP takes effect when each is scheduled."""
    for _ in range(600):  # 60 s of looks, a loaded machine's guard
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(st in ("T", "t") for st in states):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"nats-server {pid} did not stop within 60 s of its SIGSTOP: {states}")


async def _position(store: EventStore) -> Position:
    stored = await store.read("a1")
    return Position(stored[-1].seq, event_hash(stored[-1].raw))


async def test_agents_lists_every_agent_with_a_log(store: EventStore) -> None:
    assert await store.agents() == []
    await spawned(store, "b2")
    await spawned(store, "a1")
    assert await store.agents() == ["a1", "b2"]
    assert (await store.load("nobody")).state == initial("nobody")


async def test_follow_delivers_every_event_and_survives_a_failing_handler(
    store: EventStore,
) -> None:
    await spawned(store)
    await store.nc.jetstream().publish(subjects.events("a1"), b"garbage")
    seen: list[Stored] = []
    failed_once: set[int] = set()
    stop = asyncio.Event()

    async def handler(stored: Stored) -> None:
        if stored.seq == 2 and stored.seq not in failed_once:
            failed_once.add(stored.seq)
            raise RuntimeError("transient")
        seen.append(stored)
        if len(seen) == 3:
            stop.set()

    await asyncio.wait_for(store.follow("test", handler, stop=stop), timeout=20)
    assert failed_once == {2}
    assert sorted(s.seq for s in seen) == [1, 2, 3]  # the garbage (seq 4) was terminated
    assert all(isinstance(s.event, AgentEvent.__args__) for s in seen)  # type: ignore[attr-defined]


def test_evolve_is_what_the_store_applies() -> None:
    # The store must not have its own notion of state: record() is append + evolve.
    state = initial("a1")
    events = run(state, c.Create(name="a1"))
    assert fold(events, state) == evolve(evolve(state, events[0]), events[1])


async def test_a_store_that_does_not_answer_is_said_to_be_unavailable(
    nats_server: NatsServer,
) -> None:
    """A spawn first asks whether the name has a log; a server that does not answer in time
    (here stopped with SIGSTOP) is a sentence, store_unavailable, not an internal error."""
    nc = await connect(nats_server.url)
    try:
        await ensure_streams(nc.jetstream())
        store = EventStore(nc, nc.jetstream(timeout=0.5))
        assert await store.last_seq("a1") == 0
        os.kill(nats_server.pid, signal.SIGSTOP)
        await _stopped(nats_server.pid)  # else, on a loaded machine, it may answer first
        try:
            with pytest.raises(StoreUnavailable, match="did not say in time whether a1 has a log"):
                await store.last_seq("a1")
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)
    finally:
        await nc.close()


async def test_a_follower_started_while_jetstream_does_not_answer_waits_for_it(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """fleet up's health service once died with its first consumer lookup, asked while a
    crashed NATS was being restarted; a follower now asks again until JetStream answers."""
    nc = await connect(nats_server.url)
    try:
        await ensure_streams(nc.jetstream())
        store = EventStore(nc, nc.jetstream(timeout=0.5))
        await spawned(store)
        stored_seqs = [s.seq for s in await store.read("a1")]
        seen: list[int] = []
        stop = asyncio.Event()

        async def handler(stored: Stored) -> None:
            seen.append(stored.seq)
            if len(seen) == len(stored_seqs):
                stop.set()

        os.kill(nats_server.pid, signal.SIGSTOP)
        await _stopped(nats_server.pid)
        try:
            follower = asyncio.create_task(store.follow("late", handler, stop=stop))
            for _ in range(600):  # until it said it will ask again (each look 0.1 s)
                if "asking again" in caplog.text or follower.done():
                    break
                await asyncio.sleep(0.1)
            assert "asking again" in caplog.text, "the follower never said it would ask again"
            assert not follower.done(), follower
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)
        await asyncio.wait_for(follower, timeout=60)
        assert seen == stored_seqs
    finally:
        await nc.close()

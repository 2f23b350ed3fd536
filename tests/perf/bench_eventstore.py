"""Group `eventstore`: checked appends, 100 concurrent agents, replay, snapshot loads.

Each figure is taken in rounds that alternate with its floor (a thin raw nats-py client doing
the nearest raw equivalent on the same server), so machine noise hits both alike.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.eventstore import EventStore
from schemas import subjects
from schemas.agent import AgentState, evolve, initial
from schemas.chain import Position
from schemas.events import ActivityChanged, AgentEvent
from schemas.states import Activity
from tests.perf.common import emit, fresh_nats, log, p50

ROUNDS = 3
SINGLE = 2_000
AGENTS, PER_AGENT = 100, 100
REPLAY = 100_000
HISTORY, TAIL = 1_000, 49  # snapshots every 50 events: a tail of 49 is the longest there is
LOADS = 300

_ids = itertools.count()
_NOW = datetime.now(UTC)


def activity_events(agent_id: str, n: int) -> list[AgentEvent]:
    acts = (Activity.WORKING, Activity.READY)
    return [
        ActivityChanged(
            agent_id=agent_id, event_id=f"e{next(_ids)}", at=_NOW, to=acts[i % 2], actor="bench"
        )
        for i in range(n)
    ]


def payload() -> bytes:
    return msgspec.json.encode(activity_events("raw", 1)[0])


async def append_single(nc: Client) -> None:
    store, js = EventStore(nc), nc.jetstream()
    ours, raw = [], []
    for r in range(ROUNDS):
        data, subject = payload(), subjects.events(f"raw{r}")
        t = time.perf_counter()
        for _ in range(SINGLE):
            await js.publish(subject, data)
        raw.append(SINGLE / (time.perf_counter() - t))
        events, pos = activity_events(f"one{r}", SINGLE), Position()
        t = time.perf_counter()
        for event in events:
            pos = await store.append(event.agent_id, [event], pos)
        ours.append(SINGLE / (time.perf_counter() - t))
    emit("append_single", p50(ours), "events/s", p50(raw))


async def append_100_agents(nc: Client) -> None:
    store, js = EventStore(nc), nc.jetstream()

    async def checked(agent_id: str) -> None:
        pos = Position()
        for event in activity_events(agent_id, PER_AGENT):
            pos = await store.append(agent_id, [event], pos)

    async def unchecked(agent_id: str) -> None:
        data, subject = payload(), subjects.events(agent_id)
        for _ in range(PER_AGENT):
            await js.publish(subject, data)

    ours, raw = [], []
    for r in range(ROUNDS):
        for writer, out, prefix in ((unchecked, raw, "raw"), (checked, ours, "many")):
            t = time.perf_counter()
            await asyncio.gather(*(writer(f"{prefix}{r}-{i}") for i in range(AGENTS)))
            out.append(AGENTS * PER_AGENT / (time.perf_counter() - t))
    emit("append_100_agents", p50(ours), "events/s", p50(raw), "target >= 20000")


async def fill(nc: Client, agent_id: str, n: int) -> None:
    """Write `n` events quickly, pipelined, with the headers a checked append stores.

    On the fresh stream this subject's messages take sequences base+1, base+2, ..., so each
    expected last sequence is known before the acks arrive.
    """
    js, enc = nc.jetstream(), msgspec.json.Encoder()
    base = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    pending = []
    for i, event in enumerate(activity_events(agent_id, n)):
        expected = str(base + i if i else 0)
        headers = {"Nats-Msg-Id": event.event_id, "Nats-Expected-Last-Subject-Sequence": expected}
        data = enc.encode(event)
        pending.append(await js.publish_async(subjects.events(agent_id), data, headers=headers))
        if len(pending) == 1000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def raw_ordered_count(nc: Client, agent_id: str, n: int) -> float:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    t = time.perf_counter()
    sub = await nc.jetstream().subscribe(
        subjects.events(agent_id), ordered_consumer=True, cb=on_msg, pending_msgs_limit=-1
    )
    await done
    rate = n / (time.perf_counter() - t)
    await sub.unsubscribe()
    return rate


async def replay(nc: Client) -> None:
    log(f"replay: writing {REPLAY} events")
    await fill(nc, "big", REPLAY)
    store = EventStore(nc)
    ours, raw = [], []
    for _ in range(ROUNDS):
        raw.append(await raw_ordered_count(nc, "big", REPLAY))
        t = time.perf_counter()
        loaded = await store.replay("big")
        ours.append(REPLAY / (time.perf_counter() - t))
        assert loaded.state.events == REPLAY, loaded.state.events
    emit(
        "replay",
        p50(ours),
        "events/s",
        p50(raw),
        "target >= 80000; floor: ordered consumer, no decode",
    )


async def load_snapshot(nc: Client) -> None:
    store = EventStore(nc)
    events = activity_events("hist", HISTORY)
    head, tail = events[: HISTORY - TAIL], events[HISTORY - TAIL :]
    state: AgentState = initial("hist")
    pos = await store.append("hist", head, Position())
    for event in head:
        state = evolve(state, event)
    await store.save_snapshot(state, pos)
    await store.append("hist", tail, pos)
    kv = await nc.jetstream().key_value(subjects.SNAPSHOTS_BUCKET)
    ours, raw = [], []
    for _ in range(LOADS):
        t = time.perf_counter()
        await kv.get("hist")
        raw.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        loaded = await store.load("hist")
        ours.append((time.perf_counter() - t) * 1000)
    assert loaded.state.events == HISTORY
    emit(
        "load_snapshot_p50_ms",
        p50(ours),
        "ms",
        p50(raw),
        f"target <= 1.5; {HISTORY} events, snapshot + {TAIL}-event tail; floor: the KV get alone",
    )


async def main() -> None:
    for bench in (append_single, append_100_agents, replay, load_snapshot):
        async with fresh_nats() as nc:
            await bench(nc)

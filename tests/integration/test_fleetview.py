"""The supervisor's fleet view against a real nats-server: folded from the log, never behind."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from nats.aio.client import Client

from actors.supervisor.fleetview import FleetView
from infra.eventstore import EventStore
from schemas import commands as c
from schemas.agent import AgentState, decide, initial
from schemas.chain import Position
from schemas.control import ActorView

_ids = itertools.count()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _id() -> str:
    return f"ev-{next(_ids)}"


async def _do(
    store: EventStore, state: AgentState, pos: Position, *cmds: c.AgentCommand
) -> tuple[AgentState, Position]:
    for cmd in cmds:
        state, pos = await store.record(state, decide(state, cmd, now=NOW, new_id=_id), pos)
    return state, pos


async def test_the_view_is_the_fold_and_reads_its_callers_writes(nc: Client) -> None:
    store = EventStore(nc)
    a1 = await _do(store, initial("a1"), Position(), c.Create(name="a1"), c.MarkRunning())
    await _do(store, initial("a2"), Position(), c.Create(name="a2"))
    view = FleetView(nc)
    await view.start()
    try:
        assert await view.caught_up()
        shown = {v["id"]: v for v in view.views(["a1", "a2", "ghost"])}
        assert sorted(shown) == ["a1", "a2"]  # an id the log does not know is left out
        assert shown["a1"]["lifecycle"] == "RUNNING" and shown["a2"]["lifecycle"] == "SPAWNING"
        assert shown["a1"]["seq"] == a1[1].seq

        state, pos = await _do(store, *a1, c.Pause())  # then list at once: no lag allowed
        assert await view.caught_up()
        (paused,) = view.views(["a1"])
        assert paused["lifecycle"] == "PAUSED" and paused["seq"] == pos.seq
        assert paused == dict(paused, events=state.events)
    finally:
        await view.close()


async def test_where_actors_run_is_asked_once_then_kept(nc: Client) -> None:
    store = EventStore(nc)
    await _do(store, initial("a1"), Position(), c.Create(name="a1"))
    view = FleetView(nc)
    await view.start()
    asked: list[str] = []

    async def ask(agent_id: str) -> ActorView:
        asked.append(agent_id)
        return ActorView("node-1", 4242)

    try:
        assert await view.caught_up()
        view.refresh(["a1"], ask)
        assert view._refreshing is not None
        await view._refreshing
        view.refresh(["a1"], ask)  # known and fresh: not asked again
        (shown,) = view.views(["a1"])
        assert shown["actor"] == {"node": "node-1", "pid": 4242} and asked == ["a1"]
    finally:
        await view.close()

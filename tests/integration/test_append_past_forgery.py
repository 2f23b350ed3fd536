"""A writer that meets a forgery at the tail of its log (a message stored on `fleet.evt.<id>`
with the control plane's credential, not signed with the fleet key) refuses it, as every
reader does, and appends after it at once: no failed append, no reload. A message that does
verify (a real second writer) is still a conflict, and so is anything without the key.
Against a real nats-server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from schemas import commands as c
from schemas.errors import ConcurrentUpdate
from schemas.states import Activity
from tests.integration.test_eventverify import KEY, forged_ready, inject, run, spawned


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await connect(nats_server.url)
    await ensure_streams(nc.jetstream())
    try:
        yield nc
    finally:
        await nc.close()


async def test_an_append_goes_on_after_a_forged_tail_and_refuses_it(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = EventStore(nc, mac_key=KEY, snapshot_every=1000)
    state, pos = await spawned(store)
    forged = await inject(nc, "a1", forged_ready("a1", pos.hash))
    first = (await EventStore(nc).read("a1"))[0]
    replayed = await inject(nc, "a1", first.raw, first.mac)  # an old signed event, again

    work = run(state, c.ObserveActivity(activity=Activity.WORKING))
    state, after = await store.record(state, work, pos)  # the position before the forgeries

    assert after.seq == replayed + 1
    loaded = await store.load("a1")
    assert loaded.state == state and loaded.position == after  # chained to the genuine tail
    assert [r.seq for r in loaded.refused] == [forged, replayed]
    said = [r.getMessage() for r in caplog.records]
    for seq in (forged, replayed):
        assert any(f"append: agent a1's event at sequence {seq} was refused" in m for m in said)
    # and the next append, from where the last one left off, needs no second look
    state, _ = await store.record(
        state, run(state, c.ObserveActivity(activity=Activity.READY)), after
    )
    assert (await store.load("a1")).state == state


async def test_a_genuine_second_writer_is_still_a_conflict(nc: Client) -> None:
    store = EventStore(nc, mac_key=KEY, snapshot_every=1000)
    state, pos = await spawned(store)
    other = EventStore(nc, mac_key=KEY, snapshot_every=1000)  # another incarnation, the key
    await other.record(state, run(state, c.ObserveActivity(activity=Activity.WORKING)), pos)
    # a forgery after the genuine event does not hide it
    await inject(nc, "a1", forged_ready("a1", "whatever"))
    mine = run(state, c.ObserveActivity(activity=Activity.WORKING))
    assert mine  # something to append (the state is READY)
    with pytest.raises(ConcurrentUpdate):
        await store.record(state, mine, pos)


async def test_without_the_key_anything_new_is_a_conflict(nc: Client) -> None:
    signed = EventStore(nc, mac_key=KEY, snapshot_every=1000)
    state, pos = await spawned(signed)
    await inject(nc, "a1", forged_ready("a1", pos.hash))
    unsigned = EventStore(nc, snapshot_every=1000)
    with pytest.raises(ConcurrentUpdate):
        await unsigned.append("a1", run(state, c.ObserveActivity(activity=Activity.WORKING)), pos)
    assert (await signed.load("a1")).position.seq == pos.seq + 1  # the forgery, nothing else

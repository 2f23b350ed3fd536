"""The ports service against a real nats-server: leases by KV compare-and-set (two services
racing never hand one port to two agents), a real bind check, release from the agents'
events, and reclaiming the leases of agents that no longer exist."""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client

from infra.eventstore import EventStore
from infra.nats import connect
from infra.natsserver import NatsServer
from schemas import commands as c
from schemas import events as e
from schemas import subjects
from schemas.agent import AgentState, decide
from schemas.chain import Position
from schemas.errors import PortsExhausted
from services import port_broker
from tests.fleet.helpers import request


def free_range(size: int) -> tuple[int, int]:
    """`size` consecutive ports that bind now (a random place, so parallel runs rarely meet)."""
    while True:
        low = random.randrange(30000, 60000 - size)
        if all(port_broker.port_free(p) for p in range(low, low + size)):
            return low, low + size - 1


@pytest.fixture
def span() -> tuple[int, int]:
    return free_range(40)


@pytest.fixture
async def service(nc: Client, span: tuple[int, int]) -> AsyncIterator[port_broker.PortsService]:
    running = await port_broker.start(nc, span, reclaim_every_s=3600)
    yield running
    await running.close()


async def ask(nc: Client, **payload: Any) -> dict[str, Any]:
    return await request(nc, subjects.control("ports"), payload, 5)


class Writer:
    """An agent's log written the way its actor writes it: decide, then record."""

    def __init__(self, store: EventStore, agent_id: str) -> None:
        self.store, self.state, self.position = store, AgentState(agent_id=agent_id), Position()

    async def run(self, cmd: c.AgentCommand) -> None:
        events = decide(self.state, cmd, now=datetime.now(UTC), new_id=lambda: uuid.uuid4().hex)
        await self.facts(events)

    async def facts(self, events: list[e.AgentEvent]) -> None:
        self.state, self.position = await self.store.record(self.state, events, self.position)

    async def leased(self, got: dict[str, int]) -> None:
        meta = {"agent_id": self.state.agent_id, "event_id": uuid.uuid4().hex}
        await self.facts([e.PortsLeased(ports=got, at=datetime.now(UTC), **meta)])


async def test_lease_release_and_list(nc: Client, service: port_broker.PortsService) -> None:
    span = (service.leaser.low, service.leaser.high)
    got = await ask(nc, op="lease", agent="a1", names=["api.http", "db.pg"])
    assert got["ok"] is True and set(got["ports"]) == {"api.http", "db.pg"}
    assert all(span[0] <= p <= span[1] for p in got["ports"].values())
    again = await ask(nc, op="lease", agent="a1", names=["api.http"])
    assert again["ports"]["api.http"] == got["ports"]["api.http"]  # held: the same port

    listed = await ask(nc, op="ls", agent="a1")
    assert {(r["port"], r["name"]) for r in listed["leases"]} == {
        (p, n) for n, p in got["ports"].items()
    }
    released = await ask(nc, op="release", agent="a1", names=["db.pg"])
    assert released["released"] == {"db.pg": got["ports"]["db.pg"]}
    assert [r["name"] for r in (await ask(nc, op="ls"))["leases"]] == ["api.http"]

    bad = await ask(nc, op="lease", agent="a1", names=["nodot"])
    assert bad["error"]["code"] == "invalid_name"
    assert (await ask(nc, op="lease", agent="a.1", names=["x.y"]))["error"]["code"] == (
        "invalid_name"
    )


async def test_two_services_racing_never_lease_one_port_twice(
    nats_server: NatsServer, nc: Client
) -> None:
    span = free_range(30)
    other = await connect(nats_server.url)
    first = await port_broker.start(nc, span, follow=False)
    second = await port_broker.start(other, span, follow=False)
    try:
        leasers = [first.leaser, second.leaser]
        calls = [
            leasers[i % 2].lease(f"a{i}", ("api.http", "db.pg")) for i in range(20)
        ]  # 40 leases wanted from 30 ports: some calls must be refused
        results = await asyncio.gather(*calls, return_exceptions=True)
        granted = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, PortsExhausted)]
        assert len(granted) + len(refused) == 20 and granted and refused
        handed = [p for r in granted for p in r.values()]
        assert len(handed) == len(set(handed)) == 2 * len(granted)
        stored = await first.leaser.scan()
        assert sorted(stored) == sorted(handed)  # a refused call kept none of its leases
        owners = {p: (lease.agent, lease.name) for p, (lease, _) in stored.items()}
        for i, r in enumerate(results):
            if isinstance(r, dict):
                assert {owners[p] for p in r.values()} == {(f"a{i}", n) for n in r}
    finally:
        await first.close()
        await second.close()
        await other.close()


@pytest.fixture
def foreign() -> Iterator[tuple[socket.socket, tuple[int, int]]]:
    low, high = free_range(3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", low))
    sock.listen()
    try:
        yield sock, (low, high)
    finally:
        sock.close()


async def test_a_port_in_use_by_a_foreign_socket_is_skipped(
    nc: Client, foreign: tuple[socket.socket, tuple[int, int]]
) -> None:
    _, (low, high) = foreign
    running = await port_broker.start(nc, (low, high), follow=False)
    try:
        got = await running.leaser.lease("a1", ("api.http", "web.http"))
        assert sorted(got.values()) == [low + 1, high]
        with pytest.raises(PortsExhausted, match=rf"every port in {low}-{high}"):
            await running.leaser.lease("a2", ("api.http",))
    finally:
        await running.close()


async def test_ports_are_released_when_the_agent_stops(
    nc: Client, service: port_broker.PortsService
) -> None:
    agent = Writer(EventStore(nc), "w1")
    await agent.run(c.Create(name="w1", repo="/r"))
    got = (await ask(nc, op="lease", agent="w1", names=["api.http"]))["ports"]
    await agent.leased(got)
    await agent.run(c.MarkRunning(by="agent"))
    other = await ask(nc, op="lease", agent="w2", names=["api.http"])  # no log: an orphan later
    assert other["ok"]
    await asyncio.sleep(0.3)
    assert len((await ask(nc, op="ls", agent="w1"))["leases"]) == 1  # running: kept

    await agent.run(c.Stop())
    await agent.run(c.MarkStopped(by="agent"))
    for _ in range(100):
        if not (await ask(nc, op="ls", agent="w1"))["leases"]:
            break
        await asyncio.sleep(0.05)
    assert (await ask(nc, op="ls", agent="w1"))["leases"] == []
    assert len((await ask(nc, op="ls", agent="w2"))["leases"]) == 1  # young: within the grace


async def test_orphans_are_reclaimed_and_live_leases_kept(nc: Client) -> None:
    # No background reclaim here: this test calls it, with no grace for young leases.
    service = await port_broker.start(nc, free_range(10), follow=False, grace_s=0.0)
    try:
        await orphans_are_reclaimed(nc, service)
    finally:
        await service.close()


async def orphans_are_reclaimed(nc: Client, service: port_broker.PortsService) -> None:
    live = Writer(EventStore(nc), "live")
    await live.run(c.Create(name="live", repo="/r"))
    kept = await service.leaser.lease("live", ("api.http",))
    await live.leased(kept)
    await service.leaser.lease("live", ("extra.http",))  # never recorded by the agent
    await service.leaser.lease("ghost", ("api.http", "db.pg"))  # an agent with no log

    reclaimed = await service.reclaim()
    assert set(reclaimed) == {"live", "ghost"}
    assert set(reclaimed["ghost"]) == {"api.http", "db.pg"}
    assert set(reclaimed["live"]) == {"extra.http"}
    left = await service.leaser.scan()
    assert [(lease.agent, lease.name) for lease, _ in left.values()] == [("live", "api.http")]


async def test_a_release_judged_before_a_renewal_leaves_the_lease(
    nc: Client, service: port_broker.PortsService
) -> None:
    got = await service.leaser.lease("a1", ("api.http",))
    port = got["api.http"]
    _, old_rev = (await service.leaser.scan())[port]
    await service.leaser.lease("a1", ("api.http",))  # renewed: a new revision
    assert await service.leaser._delete(port, old_rev) is False
    assert port in await service.leaser.scan()

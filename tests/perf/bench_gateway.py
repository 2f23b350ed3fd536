"""Gateway benchmarks at 200 agents: events to a WebSocket client, and `GET /api/agents`.

The 200 agents' logs are written directly with EventStore (no Ray: 200 agent actors at ~42 MB
and ~0.4 s each do not fit a 2-core machine next to a test suite). `fleet.ctl.list` is answered
by a stand-in responder that replies with the 200 agents' views folded from those logs, the
shape the supervisor sends; the real supervisor also asks each actor for its view over Ray,
which this does not measure. The appends come from another process, as agent actors' do; the
gateway and the WebSocket client share one event loop.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.config import Settings
from infra.eventstore import EventStore
from schemas import events as e
from schemas import replies, subjects
from schemas.chain import Position
from schemas.control import view
from schemas.states import Activity, Lifecycle
from services import gateway
from services.tokens import TokenStore
from tests.perf.common import emit, fresh_nats, log, p50

AGENTS = 200
ROUNDS = 15
LIST_REQUESTS = 200


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def _id() -> str:
    return uuid.uuid4().hex


async def _create(store: EventStore, agent: str) -> Position:
    now = datetime.now(UTC)
    return await store.append(
        agent,
        [
            e.AgentCreated(
                agent_id=agent,
                event_id=_id(),
                at=now,
                name=agent,
                template="shell",
                repo="/tmp/repo",
            ),
            e.LifecycleChanged(agent_id=agent, event_id=_id(), at=now, to=Lifecycle.SPAWNING),
            e.LifecycleChanged(
                agent_id=agent, event_id=_id(), at=now, to=Lifecycle.RUNNING, frm=Lifecycle.SPAWNING
            ),
        ],
        Position(),
    )


async def _list_responder(nc: Client, store: EventStore, agents: list[str]) -> None:
    views = []
    for agent in agents:
        loaded = await store.load(agent)
        views.append(msgspec.to_builtins(view(loaded.state, seq=loaded.position.seq)))

    async def on_msg(msg: Msg) -> None:
        await msg.respond(replies.ok(agents=views))

    await nc.subscribe(subjects.control("list"), cb=on_msg)


async def _append_rounds(nats_url: str, agents: list[str]) -> None:
    """In a process of its own (as agent actors are): rounds of one event per agent, all at
    once; each event carries the wall clock just before its append, in `detail`."""
    from infra.nats import connect

    nc = await connect(nats_url)
    store = EventStore(nc)
    positions = {a: (await store.load(a)).position for a in agents}

    async def one(agent: str, to: Activity, frm: Activity) -> None:
        event = e.ActivityChanged(
            agent_id=agent,
            event_id=_id(),
            at=datetime.now(UTC),
            to=to,
            frm=frm,
            detail=str(time.time_ns()),
        )
        positions[agent] = await store.append(agent, [event], positions[agent])

    for round_ in range(ROUNDS):
        to = Activity.WORKING if round_ % 2 == 0 else Activity.READY
        frm = Activity.READY if to is Activity.WORKING else Activity.WORKING
        await asyncio.gather(*(one(a, to, frm) for a in agents))
        await asyncio.sleep(0.2)
    await nc.close()


async def _events_to_browser(
    url: str, token: str, nc: Client, nats_url: str
) -> tuple[list[float], list[float]]:
    """Latency from just before an append (in another process) to arrival at the WebSocket."""
    browser: list[float] = []
    direct: list[float] = []

    async def on_core(msg: Msg) -> None:  # the floor: a plain NATS subscriber
        sent = msgspec.json.decode(msg.data)["detail"]
        direct.append((time.time_ns() - int(sent)) / 1e6)

    sub = await nc.subscribe(subjects.ALL_EVENTS, cb=on_core)
    ws_url = f"{url}/ws/events?token={token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await asyncio.sleep(0.1)
        appender = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.perf.bench_gateway", nats_url
        )
        while len(browser) < AGENTS * ROUNDS:
            batch = await ws.receive_json(timeout=60)
            now = time.time_ns()
            browser.extend((now - int(x["detail"])) / 1e6 for x in batch["events"])
        await appender.wait()
    await sub.unsubscribe()
    return browser, direct


async def _api_list(url: str, token: str, nc: Client) -> tuple[list[float], list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    over_http: list[float] = []
    over_nats: list[float] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(20):  # warm up both paths
            async with http.get(url + "/api/agents", headers=headers) as r:
                await r.read()
        for _ in range(LIST_REQUESTS):
            started = time.perf_counter()
            async with http.get(url + "/api/agents", headers=headers) as r:
                body = await r.read()
            over_http.append((time.perf_counter() - started) * 1000)
            assert r.status == 200 and body.count(b'"lifecycle"') == AGENTS
            started = time.perf_counter()
            await nc.request(subjects.control("list"), b"{}", timeout=5)
            over_nats.append((time.perf_counter() - started) * 1000)
    return over_http, over_nats


async def main() -> None:
    async with fresh_nats() as nc:
        store = EventStore(nc)
        agents = [f"b{i:03d}" for i in range(AGENTS)]
        await asyncio.gather(*(_create(store, a) for a in agents))
        await _list_responder(nc, store, agents)
        with tempfile.TemporaryDirectory(prefix="fleet-bench-gw-") as tmp:
            token = TokenStore(Path(tmp)).create("viewer", "bench")
            url_nats = nc.connected_url
            assert url_nats is not None
            app = gateway.init(Settings(state_dir=Path(tmp)), url_nats.geturl())
            runner = await gateway.start(app, port=0)
            try:
                url = gateway.url_of(runner)
                log(f"gateway: {AGENTS} agents, {ROUNDS} rounds of one event each")
                browser, direct = await _events_to_browser(url, token, nc, url_nats.geturl())
                note = (
                    f"{AGENTS} agents, logs written with EventStore (no Ray), appended from "
                    "another process, one event per agent at once per round; floor: a plain "
                    "NATS subscriber in the gateway's process"
                )
                emit("events_to_browser_p99_ms", _p99(browser), "ms", _p99(direct), note)
                emit("events_to_browser_p50_ms", p50(browser), "ms", p50(direct), note)
                over_http, over_nats = await _api_list(url, token, nc)
                note = (
                    f"{AGENTS} agents; fleet.ctl.list answered by a stand-in with their views "
                    "(the real supervisor cannot hold 200 actors here); floor: the same "
                    "request over NATS without HTTP"
                )
                emit("api_list_p50_ms", p50(over_http), "ms", p50(over_nats), note)
            finally:
                await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(_append_rounds(sys.argv[1], [f"b{i:03d}" for i in range(AGENTS)]))

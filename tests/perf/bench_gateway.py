"""Gateway benchmarks at 200 agents: events to a WebSocket client, and `GET /api/agents`.

The 200 agents' logs are written directly with EventStore (no Ray: 200 agent actors at ~42 MB
and ~0.4 s each do not fit a 2-core machine next to a test suite). The appends come from
another process, as agent actors' do; the gateway and the WebSocket client share one event loop.

`GET /api/agents` is the gateway asking `fleet.ctl.list`, answered by the real supervisor
(actors/supervisor/actor.py: its constructor, subscriptions, fleet view and `_list`), run in a
process of its own. The list is folded from the log (actors/supervisor/fleetview.py) and asks no
actor, so the figure is the whole path: HTTP, the gateway, NATS request/reply, the catch-up
check against the stream, 200 views built and encoded. Only the actor handles are stand-ins (200
Ray actors need ~8 GB and a minute and a half here): `AgentContext.show` (what `AgentActor.show`
answers) on each agent's folded log answers the background "where does it run" refresh, which
is off the list's path.
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
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra import fleetkey
from infra.config import Settings
from infra.eventstore import EventStore, Loaded
from schemas import events as e
from schemas import subjects
from schemas.chain import Position
from schemas.states import Activity, Lifecycle
from services import gateway
from services.tokens import TokenStore
from tests.perf.common import emit, fresh_nats, log, p50

AGENTS = 200
ROUNDS = 15
LIST_REQUESTS = 200
KEY = b"bench-gateway-fleet-key"  # the gateway verifies what it reads: the writers sign


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


class _Remote:
    """`handle.method.remote()` without Ray: the method's result, already resolved."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(self.method(*args))
        return done


class _AgentInProcess:
    """What the supervisor asks an agent actor for, answered by `AgentContext.show` itself on
    the agent's state folded from its log (the actor's own state after a rebuild)."""

    def __init__(self, agent_id: str, loaded: Loaded) -> None:
        from actors.agent import AgentContext

        self.state, self.position, self.node = loaded.state, loaded.position, "bench"
        context: Any = AgentContext
        self.show = _Remote(lambda: context.show(self))
        self.agent_id = _Remote(lambda: agent_id)


async def _supervisor(nats_url: str, state_dir: Path) -> Any:
    """The real supervisor (constructor, subscriptions, `_list`) with in-process agents."""
    from actors.agent import AgentConfig
    from actors.supervisor import FleetConfig, Supervisor

    class BenchSupervisor(Supervisor):
        async def refind(self) -> list[str]:
            for agent_id in await self.store.agents():
                self.actors[agent_id] = _AgentInProcess(agent_id, await self.store.load(agent_id))
            return sorted(self.actors)

        async def _fill_pool(self) -> None:
            return None  # no warm pool: it would start Ray actors

    agent = AgentConfig(nats_url, str(state_dir), str(state_dir / "worktrees"))
    supervisor: Any = BenchSupervisor.__new__(BenchSupervisor)
    await supervisor.__init__(FleetConfig(agent=agent, pool_size=0, max_agents=AGENTS))
    assert len(supervisor.actors) == AGENTS, len(supervisor.actors)
    return supervisor


def _serve_supervisor(nats_url: str, state_dir: str) -> None:
    """In a process of its own (as the supervisor actor is): answer until stdin closes."""

    async def run() -> None:
        supervisor = await _supervisor(nats_url, Path(state_dir))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await supervisor.dead_letters.stop()
        await supervisor.nc.close()

    asyncio.run(run())


async def _append_rounds(nats_url: str, agents: list[str]) -> None:
    """In a process of its own (as agent actors are): rounds of one event per agent, all at
    once; each event carries the wall clock just before its append, in `detail`."""
    from infra.nats import connect

    nc = await connect(nats_url)
    store = EventStore(nc, mac_key=KEY)
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
    ws_url = f"{url}/ws/events"  # the token in the header (a browser would use a ticket)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, headers=headers) as ws:
        await asyncio.sleep(0.1)
        appender = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.perf.bench_gateway", "append", nats_url
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
            assert r.status == 200 and body.count(b'"lifecycle"') == AGENTS, body[:300]
            started = time.perf_counter()
            await nc.request(subjects.control("list"), b"{}", timeout=5)
            over_nats.append((time.perf_counter() - started) * 1000)
    return over_http, over_nats


async def main() -> None:
    async with fresh_nats() as nc:
        store = EventStore(nc, mac_key=KEY)
        agents = [f"b{i:03d}" for i in range(AGENTS)]
        await asyncio.gather(*(_create(store, a) for a in agents))
        with tempfile.TemporaryDirectory(prefix="fleet-bench-gw-") as tmp:
            token = TokenStore(Path(tmp)).create("viewer", "bench")
            fleetkey.key_path(tmp).write_text(KEY.hex() + "\n")
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
                supervisor = await _start_supervisor(url_nats.geturl(), Path(tmp))
                try:
                    over_http, over_nats = await _api_list(url, token, nc)
                finally:
                    supervisor.stdin.close()  # type: ignore[union-attr]
                    await supervisor.wait()
                note = (
                    f"{AGENTS} agents with real logs; fleet.ctl.list answered by the real "
                    "supervisor in its own process from its fleet view (folded from the log); "
                    "floor: the same request over NATS without HTTP"
                )
                emit("api_list_p50_ms", p50(over_http), "ms", p50(over_nats), note)
            finally:
                await runner.cleanup()


async def _start_supervisor(nats_url: str, state_dir: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.perf.bench_gateway",
        "supervisor",
        nats_url,
        str(state_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line == b"ready\n", f"the bench supervisor did not start: {line!r}"
    return proc


if __name__ == "__main__":
    if sys.argv[1] == "supervisor":
        _serve_supervisor(sys.argv[2], sys.argv[3])
    else:
        asyncio.run(_append_rounds(sys.argv[2], [f"b{i:03d}" for i in range(AGENTS)]))

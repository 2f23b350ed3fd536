"""A gateway on a real nats-server for tests: its URL, a token per role, and an event writer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from infra import fleetkey
from infra.config import Settings
from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams
from schemas import events as e
from schemas.chain import Position
from schemas.states import Activity, Lifecycle
from services import gateway
from services.tokens import TokenStore


@dataclass
class Gateway:
    url: str
    tokens: dict[str, str]  # role -> token
    store: EventStore
    app: web.Application
    positions: dict[str, Position]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def ws_url(self, http: aiohttp.ClientSession, path: str, role: str) -> str:
        """The URL of WebSocket `path` with a new ticket of `role`'s token (as a browser)."""
        return await ticket_url(http, self.url, path, self.tokens[role])

    async def append(self, agent_id: str, *events: e.AgentEvent) -> Position:
        position = await self.store.append(
            agent_id, events, self.positions.get(agent_id, Position())
        )
        self.positions[agent_id] = position
        return position


def created(agent_id: str) -> list[e.AgentEvent]:
    now = datetime.now(UTC)
    return [
        e.AgentCreated(
            agent_id=agent_id,
            event_id=uuid.uuid4().hex,
            at=now,
            name=agent_id,
            template="shell",
            repo="/tmp/repo",
        ),
        e.LifecycleChanged(
            agent_id=agent_id, event_id=uuid.uuid4().hex, at=now, to=Lifecycle.SPAWNING
        ),
        e.LifecycleChanged(
            agent_id=agent_id,
            event_id=uuid.uuid4().hex,
            at=now,
            to=Lifecycle.RUNNING,
            frm=Lifecycle.SPAWNING,
        ),
    ]


def activity(agent_id: str, to: Activity, detail: str = "") -> e.ActivityChanged:
    return e.ActivityChanged(
        agent_id=agent_id, event_id=uuid.uuid4().hex, at=datetime.now(UTC), to=to, detail=detail
    )


async def run_gateway(nats_url: str, state_dir: Path) -> AsyncIterator[Gateway]:
    """Yield a started gateway (port 0) with one token per role; stop it afterwards."""
    nc = await connect(nats_url)
    await ensure_streams(nc.jetstream())
    store = TokenStore(state_dir)
    tokens = {r: store.create(r, f"test-{r}") for r in ("viewer", "operator", "admin")}
    app = gateway.init(Settings(state_dir=state_dir), nats_url)
    runner = await gateway.start(app, port=0)
    try:
        # `append` plays the agents' actors: signed with the fleet key the gateway verifies with
        store = EventStore(nc, mac_key=fleetkey.load_or_create(state_dir))
        yield Gateway(gateway.url_of(runner), tokens, store, app, {})
    finally:
        await runner.cleanup()
        await nc.close()


async def ticket_url(http: aiohttp.ClientSession, base: str, path: str, token: str) -> str:
    """`path` on the gateway at `base` with `?ticket=`, the ticket asked for with `token`."""
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(base + "/api/tickets", headers=headers) as r:
        body = await r.json()
        assert r.status == 200, body
    return f"{base}{path}{'&' if '?' in path else '?'}ticket={body['ticket']}"


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    async with session.get(url, headers=headers) as r:
        return r.status, await r.json()


async def spawn(http: aiohttp.ClientSession, gw: Gateway, repo: Path, name: str) -> dict[str, Any]:
    """Spawn agent `name` on `repo` through REST, as an admin; the reply, once it is a 201."""
    payload = {"repo": str(repo), "name": name}
    async with http.post(gw.url + "/api/agents", headers=gw.headers("admin"), json=payload) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 201, body
    return body

"""A gateway token is worth its role and nothing more, and not a moment after its revoke.

Against a real gateway on a real nats-server (and, where an agent is needed, a real fleet: Ray,
tmux, git), as a holder of a token would try it:
- a revoke made by `fleet token revoke` in another process closes that token's open
  WebSockets (live events and an operator terminal) with code 1008 and a sentence, and leaves
  other tokens' sockets open;
- a token is never accepted in a URL; a WebSocket is opened with a ticket from
  POST /api/tickets, which opens one socket, once, and dies with its token;
- the actor recorded in the log is the token's name: a `by` sent by the caller is refused and
  records nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client

from services import template_store
from services.gateway.tickets import REVOKED_CLOSE
from services.tokens import TokenStore
from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import Gateway, get_json, run_gateway, spawn, ticket_url
from tests.fleetcli import fleet_cli

GUARD_S = 60.0  # a loaded 2-core machine; every wait says what it waited for


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse, what: str) -> tuple[int, str]:
    """Read `ws` until the gateway closes it; its close code and reason."""
    while True:
        try:
            msg = await ws.receive(timeout=GUARD_S)
        except TimeoutError:
            raise AssertionError(
                f"{what} was still open {GUARD_S:.0f} s after the revoke"
            ) from None
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return int(msg.data), str(msg.extra or "")
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), (what, msg)


async def next_events(ws: aiohttp.ClientWebSocketResponse, wanted: str) -> list[dict[str, Any]]:
    """Batches of the live-events socket until one holds an event of type `wanted`."""
    seen: list[dict[str, Any]] = []
    while not any(e["type"] == wanted for e in seen):
        try:
            batch = await ws.receive_json(timeout=GUARD_S)
        except TimeoutError:
            raise AssertionError(f"no {wanted} on the live events; saw {seen}") from None
        seen.extend(batch["events"])
    return seen


@pytest.fixture
async def with_templates(nc: Client) -> AsyncIterator[None]:
    """The templates service, as `fleet up` runs it beside the supervisor."""
    running = await template_store.start(nc)
    try:
        yield
    finally:
        await running.close()


def cli(fleet: Fleet, *args: str) -> dict[str, Any]:
    done = fleet_cli(fleet.env, *args, "--json")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@pytest.mark.slow
@pytest.mark.usefixtures("with_templates")
async def test_a_revoke_in_another_process_closes_the_tokens_open_websockets(
    fleet: Fleet, repo: Path
) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            await spawn(http, gw, repo, "r1")
            made = await asyncio.to_thread(
                cli, fleet, "token", "create", "--role", "operator", "--name", "intruder"
            )
            token = made["token"]
            events_url = await ticket_url(http, gw.url, "/ws/events?agent=r1", token)
            term_url = await ticket_url(http, gw.url, "/ws/term/r1?cols=80&rows=24", token)
            bystander_url = await gw.ws_url(http, "/ws/events?agent=r1", "viewer")
            async with (
                http.ws_connect(bystander_url) as bystander,  # first: it sees the attach
                http.ws_connect(events_url) as events,
                http.ws_connect(term_url) as term,
            ):
                hello = await term.receive_json(timeout=GUARD_S)
                assert hello["user"] == "intruder" and hello["readonly"] is False
                await next_events(bystander, "user.attached")

                revoked = await asyncio.to_thread(cli, fleet, "token", "revoke", "intruder")
                assert revoked == {"revoked": 1}

                for ws, what in ((events, "the events socket"), (term, "the terminal")):
                    code, reason = await closed_by_server(ws, what)
                    assert code == REVOKED_CLOSE, (what, code, reason)
                    assert reason == "token 'intruder' was revoked; this connection is closed"
                # The terminal's end is recorded, and another token's socket still gets it.
                detached = await next_events(bystander, "user.detached")
                assert any(e.get("user") == "intruder" for e in detached), detached
                assert not bystander.closed

            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(gw.url + "/api/tickets", headers=headers) as r:
                assert r.status == 401, await r.text()
            status, body = await get_json(http, gw.url + "/api/agents/r1", headers)
            assert status == 401, body


async def test_a_token_in_the_url_is_refused_with_a_sentence(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    for path in ("/ws/events", "/ws/term/a1", "/api/agents"):
        url = f"{gw.url}{path}?token={gw.tokens['admin']}"
        for headers in (None, gw.headers("admin")):  # refused even beside a good header
            status, body = await get_json(http, url, headers)
            assert status == 401, (path, body)
            message = body["error"]["message"]  # type: ignore[index]
            assert "not accepted in the URL" in message and "POST /api/tickets" in message
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{gw.url}/ws/events?token={gw.tokens['viewer']}")
    assert refused.value.status == 401


async def test_a_ticket_opens_one_websocket_once_and_nothing_else(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(gw.url + "/api/tickets") as r:
        assert r.status == 401  # asking for a ticket needs the header
    async with http.post(gw.url + "/api/tickets", headers=gw.headers("viewer")) as r:
        assert r.status == 200
        body = await r.json()
    assert (body["role"], body["name"]) == ("viewer", "test-viewer")
    assert 0 < body["expires_in_s"] <= 60 and gw.tokens["viewer"] not in body["ticket"]
    url = f"{gw.url}/ws/events?ticket={body['ticket']}"
    async with http.ws_connect(url):
        pass
    status, again = await get_json(http, url)
    assert status == 401 and "unknown, used or expired" in again["error"]["message"]  # type: ignore[index]

    rest = await gw.ws_url(http, "/api/agents", "admin")
    status, refused = await get_json(http, rest)
    assert status == 401 and "opens a WebSocket only" in refused["error"]["message"]  # type: ignore[index]

    bad = gw.url + "/api/tickets"
    async with http.post(bad, headers=gw.headers("viewer"), json={"role": "admin"}) as r:
        assert r.status == 400, await r.text()  # a ticket is for the caller's token, as it is


async def test_a_ticket_dies_with_its_token(
    gw: Gateway, http: aiohttp.ClientSession, state_dir: Path
) -> None:
    store = TokenStore(state_dir)
    token = store.create("operator", "short-lived")
    url = await ticket_url(http, gw.url, "/ws/events", token)
    assert store.revoke("short-lived") == 1
    status, body = await get_json(http, url)
    assert status == 401 and "revoked" in body["error"]["message"]  # type: ignore[index]
    store.close()


@pytest.mark.slow
@pytest.mark.usefixtures("with_templates")
async def test_the_log_records_the_token_never_a_by_the_caller_sends(
    fleet: Fleet, repo: Path
) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            forged = {"repo": str(repo), "name": "b1", "by": "user:alice"}
            async with http.post(
                gw.url + "/api/agents", headers=gw.headers("admin"), json=forged
            ) as r:
                body = await r.json()
                assert r.status == 400 and body["error"]["code"] == "by_not_accepted", body
            status, _ = await get_json(http, gw.url + "/api/agents/b1", gw.headers("viewer"))
            assert status == 404  # the refused spawn made nothing

            await spawn(http, gw, repo, "b1")
            log_url = gw.url + "/api/agents/b1/events"
            pause = gw.url + "/api/agents/b1/pause"
            for claimed in ("user:root", "service:health", ""):
                async with http.post(
                    pause, headers=gw.headers("operator"), json={"by": claimed}
                ) as r:
                    body = await r.json()
                    assert r.status == 400 and "not accepted" in body["error"]["message"], body
            _, after = await get_json(http, log_url, gw.headers("viewer"))
            recorded: Any = after["events"]
            claimed_by = {"user:root", "service:health", ""}
            assert not [x for x in recorded if x["event"].get("actor") in claimed_by]
            assert not [x for x in recorded if x["event"].get("to") == "PAUSED"]

            async with http.post(pause, headers=gw.headers("operator")) as r:
                assert r.status == 200, await r.text()
            _, paused = await get_json(http, log_url, gw.headers("viewer"))
            events: Any = paused["events"]
            changed = [x["event"] for x in events if x["event"].get("to") == "PAUSED"]
            assert [e["actor"] for e in changed] == ["token:test-operator"], changed

"""The gateway over a real nats-server: auth, errors, the log, live events, OpenAPI, metrics;
and one real fleet (Ray, tmux, git) driven through REST."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.msg import Msg

from infra.nats import connect
from schemas import subjects
from schemas.states import Activity
from services.gateway import agents
from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import (
    Gateway,
    activity,
    created,
    get_json,
    run_gateway,
    spawn,
)


async def test_no_token_is_401_and_a_small_role_is_403(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    status, body = await get_json(http, gw.url + "/api/agents")
    assert status == 401
    assert body["ok"] is False and body["error"]["code"] == "unauthorized"  # type: ignore[index]
    status, _ = await get_json(http, gw.url + "/api/agents", {"Authorization": "Bearer nope"})
    assert status == 401
    async with http.post(gw.url + "/api/agents/a1/stop", headers=gw.headers("viewer")) as r:
        assert r.status == 403
        assert "needs operator" in (await r.json())["error"]["message"]
    async with http.post(gw.url + "/api/agents", headers=gw.headers("operator"), json={}) as r:
        assert r.status == 403  # spawning needs admin
    status, body = await get_json(http, gw.url + "/healthz")
    assert (status, body) == (200, {"ok": True, "nats": True})


async def test_errors_keep_the_reply_shape_with_a_4xx(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    status, body = await get_json(http, gw.url + "/api/agents/ghost", gw.headers("viewer"))
    assert status == 404
    assert body["error"]["code"] == "unknown_agent"  # type: ignore[index]
    send = gw.url + "/api/agents/ghost/send"
    async with http.post(send, headers=gw.headers("operator"), json={"text": 5}) as r:
        assert r.status == 400
        assert "text" in (await r.json())["error"]["message"]
    async with http.post(gw.url + "/api/agents/bad.id/pause", headers=gw.headers("admin")) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_name"
    pause = gw.url + "/api/agents/ghost/pause"
    async with http.post(pause, headers=gw.headers("operator"), json={"type": "stop"}) as r:
        assert r.status == 400  # a body naming another command is not that command
        assert "is not this route's command (pause)" in (await r.json())["error"]["message"]
    status, body = await get_json(http, gw.url + "/api/agents?removed=maybe", gw.headers("viewer"))
    assert status == 400, body
    assert "must be 1, true, yes, 0, false or no, not 'maybe'" in str(body["error"])
    tokens = gw.url + "/api/tokens"
    for name in ("two words", "x" * 65, "line\nbreak"):  # it becomes each request's `by`
        async with http.post(
            tokens, headers=gw.headers("admin"), json={"role": "viewer", "name": name}
        ) as r:
            assert r.status == 400, name
            assert (await r.json())["error"]["code"] == "invalid_name"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("git_failed", 502),
        ("tmux_failed", 502),
        ("invalid_transition", 409),
        ("pane_dead", 409),
        ("unknown_checkpoint", 404),
        ("busy", 503),
        ("rate_limited", 429),
        ("internal", 500),
        ("invalid_field", 400),
    ],
)
async def test_an_agents_error_reply_has_its_codes_status_and_its_sentence(
    gw: Gateway, http: aiohttp.ClientSession, nats_url: str, code: str, status: int
) -> None:
    """An agent (played by a plain responder on its command subject) refuses with `code`:
    the gateway answers with the status of httpstatus.STATUS and the reply as the agent wrote it."""
    reply = {"ok": False, "error": {"code": code, "message": f"the agent says {code}"}}
    nc = await connect(nats_url, name="test-agent-a1")
    try:

        async def answer(msg: Msg) -> None:
            await msg.respond(json.dumps(reply).encode())

        await nc.subscribe(subjects.command("a1"), cb=answer)
        await nc.flush()
        pause = gw.url + "/api/agents/a1/pause"
        async with http.post(pause, headers=gw.headers("operator")) as r:
            assert r.status == status, await r.text()
            assert await r.json() == reply
    finally:
        await nc.close()


async def test_a_bug_in_a_route_is_a_500_naming_the_id_it_is_logged_under(
    gw: Gateway,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(request: object, name: str) -> bool:
        raise RuntimeError("a bug in a route")

    monkeypatch.setattr(agents, "query_flag", broken)
    with caplog.at_level(logging.ERROR, logger="services.gateway.httpstatus"):
        status, body = await get_json(http, gw.url + "/api/agents", gw.headers("viewer"))
    assert status == 500, body
    error = body["error"]  # type: ignore[index]
    assert error["code"] == "internal" and error["error_id"] in error["message"]
    assert "a bug in a route" not in error["message"], "the caller gets no traceback"
    logged = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None, caplog.text
    assert "gateway: GET /api/agents failed" in logged[0].getMessage()


async def test_the_log_and_live_events_filtered_by_agent(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    await gw.append("a1", *created("a1"))
    status, body = await get_json(http, gw.url + "/api/agents/a1/events", gw.headers("viewer"))
    assert status == 200
    events: Any = body["events"]
    assert [x["event"]["type"] for x in events] == [
        "agent.created",
        "lifecycle.changed",
        "lifecycle.changed",
    ]
    url = await gw.ws_url(http, "/ws/events?agent=a1", "viewer")
    async with http.ws_connect(url) as ws:  # connected: its listener is in (gateway/hub.py)
        await gw.append("a2", *created("a2"))
        await gw.append("a1", activity("a1", Activity.AWAITING_INPUT, "Proceed? [y/n]"))
        msg = await ws.receive_json(timeout=30)
    assert [(x["agent_id"], x["type"]) for x in msg["events"]] == [("a1", "activity.changed")]
    assert msg["events"][0]["detail"] == "Proceed? [y/n]"


async def test_events_after_out_of_range_is_a_4xx_with_a_sentence(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    await gw.append("e1", *created("e1"))
    url = gw.url + "/api/agents/e1/events?after="
    status, body = await get_json(http, url + "0", gw.headers("viewer"))
    assert status == 200, body
    last = body["events"][-1]["seq"]  # type: ignore[index]
    status, body = await get_json(http, f"{url}{last}", gw.headers("viewer"))
    assert (status, body) == (200, {"ok": True, "events": []})  # nothing new is not an error
    for bad, needle, code in (
        ("-1", "must be 0 or more", 400),
        (
            str(last + 1),
            f"past the end of agent e1's log, whose last event is sequence {last}",
            404,
        ),
        (str(2**70), "past the end", 404),  # a place the log has not reached: not a bad request
        ("abc", "must be a whole number", 400),
        ("1.5", "must be a whole number", 400),
    ):
        status, body = await get_json(http, url + bad, gw.headers("viewer"))
        assert status == code, (bad, body)
        assert needle in body["error"]["message"], (bad, body)  # type: ignore[index]
    status, body = await get_json(
        http, gw.url + "/api/agents/ghost/events?after=3", gw.headers("viewer")
    )
    assert status == 404, body


async def test_openapi_is_generated_from_the_types(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    status, doc = await get_json(http, gw.url + "/openapi.json")
    assert status == 200
    paths: Any = doc["paths"]
    assert "post" in paths["/api/agents/{agent}/pause"]
    assert "get" in paths["/api/agents/{agent}/events"]
    schemas: Any = doc["components"]
    assert {"AgentView", "SpawnRequest", "ErrorReply", "Rollback"} <= set(schemas["schemas"])
    assert "TicketReply" in schemas["schemas"] and "ticket" in schemas["securitySchemes"]
    assert paths["/api/tickets"]["post"]["responses"]["200"]
    assert paths["/ws/events"]["get"]["security"] == [{"bearer": []}, {"ticket": []}]
    pause_body = paths["/api/agents/{agent}/pause"]["post"]["requestBody"]
    schema = pause_body["content"]["application/json"]["schema"]
    assert schema["properties"]["by"] is False  # the sender is the token
    assert schema["properties"]["type"] == {"enum": ["pause"]} and schema["required"] == []
    send = paths["/api/agents/{agent}/send"]["post"]["requestBody"]["content"]
    assert "pattern" in send["application/json"]["schema"]["properties"]["text"]
    spawned = paths["/api/agents"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404", "409", "413", "429", "500"} <= set(spawned)
    assert "default" not in spawned  # each status is listed, so a new one is a finding
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


async def test_metrics_fold_the_log(gw: Gateway, http: aiohttp.ClientSession) -> None:
    await gw.append("m1", *created("m1"), activity("m1", Activity.AWAITING_INPUT))
    await gw.append("m2", *created("m2"))

    async def scrape() -> str:
        async with http.get(gw.url + "/metrics") as r:
            return await r.text()

    for _ in range(100):
        text = await scrape()
        if 'fleet_agents{lifecycle="RUNNING"} 2.0' in text:
            break
        await asyncio.sleep(0.05)
    assert 'fleet_agents{lifecycle="RUNNING"} 2.0' in text
    assert 'fleet_agents_activity{activity="AWAITING_INPUT"} 1.0' in text
    assert 'fleet_events_total{type="lifecycle.changed"} 4.0' in text
    assert "fleet_spawn_duration_seconds_count 2.0" in text
    families = set(re.findall(r"^# TYPE (fleet_\w+) ", text, re.M))
    assert len(families) >= 10, families


async def test_tokens_are_stored_hashed_and_private(
    gw: Gateway, http: aiohttp.ClientSession, state_dir: Path
) -> None:
    url = gw.url + "/api/tokens"
    async with http.post(url, headers=gw.headers("admin"), json={"role": "viewer"}) as r:
        assert r.status == 201
        token = (await r.json())["token"]
    stored = (state_dir / "tokens.json").read_text()
    assert token not in stored and len(json.loads(stored)) == 4
    assert (state_dir / "tokens.json").stat().st_mode & 0o777 == 0o600
    status, _ = await get_json(
        http, gw.url + "/api/agents/x/events", {"Authorization": f"Bearer {token}"}
    )
    assert status == 404


async def test_the_dashboard_is_served_without_a_token(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    for path, needle in (("/", "fleet.js"), ("/static/fleet.js", "/ws/events")):
        async with http.get(gw.url + path) as r:
            assert r.status == 200 and needle in await r.text()


@pytest.mark.slow
async def test_a_real_fleet_through_rest(fleet: Fleet, repo: Path) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            admin = gw.headers("admin")
            for payload, code in (
                ({"repo": str(repo.parent / "nowhere")}, "not_a_repository"),
                ({"repo": "/" + "x" * 300}, "not_a_repository"),  # too long a name for the OS
                ({"repo": str(repo), "base_ref": "nope", "name": "g0"}, "unknown_ref"),
            ):
                async with http.post(gw.url + "/api/agents", headers=admin, json=payload) as r:
                    found = await r.json()
                    assert (r.status, found["error"]["code"]) == (404, code), found
            body = await spawn(http, gw, repo, "g1")
            assert body["agent"]["lifecycle"] == "RUNNING"
            status, listed = await get_json(http, gw.url + "/api/agents", gw.headers("viewer"))
            assert status == 200
            found = {a["id"]: a["lifecycle"] for a in listed["agents"]}  # type: ignore[union-attr]
            assert found == {"g1": "RUNNING"}  # every refused spawn above left no agent behind
            nope = gw.url + "/api/agents/g1/output?window=nope"
            status, body = await get_json(http, nope, gw.headers("viewer"))
            assert (status, body["error"]["code"]) == (404, "unknown_window"), body  # type: ignore[index]
            stop = gw.url + "/api/agents/g1/stop"
            async with http.post(stop, headers=gw.headers("viewer")) as r:
                assert r.status == 403
            pause = gw.url + "/api/agents/g1/resume"
            async with http.post(pause, headers=gw.headers("operator")) as r:
                assert r.status == 409  # it is RUNNING: the actor's refusal, as a conflict
                assert (await r.json())["error"]["code"] == "invalid_transition"
            async with http.post(stop, headers=gw.headers("operator")) as r:
                assert r.status == 200
                assert (await r.json())["agent"]["lifecycle"] == "STOPPED"

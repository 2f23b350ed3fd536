"""The agent page's REST over a real nats-server: checkpoints from the log, mail on JetStream,
the real health service's report, CPU/memory samples; roles and bad input on each route."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client

from infra.nats import connect
from schemas import events as e
from schemas import subjects
from schemas.health import Observation, Sample
from schemas.replies import MAX_REQUEST_BYTES
from services.health import HealthConfig
from tests.fleet.gateway_fixtures import Gateway, created, get_json
from tests.fleet.health_fixtures import running_health


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Client]:
    nc = await connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


def checkpoint(agent: str, number: int, label: str) -> e.CheckpointTaken:
    return e.CheckpointTaken(
        agent_id=agent,
        event_id=uuid.uuid4().hex,
        at=datetime.now(UTC),
        checkpoint=number,
        log_seq=3,
        commit="c0ffee" * 6 + "abcd",
        ref=f"refs/fleet/{agent}/{number}",
        label=label,
    )


async def post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else None if body is None else msgspec.json.encode(body)
    async with http.post(url, headers=headers, data=data) as r:
        return r.status, await r.json()


async def test_checkpoints_are_listed_from_the_log(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    await gw.append("c1", *created("c1"), checkpoint("c1", 1, "before the refactor"))
    url = gw.url + "/api/agents/c1/checkpoints"
    status, body = await get_json(http, url, gw.headers("viewer"))
    assert status == 200, body
    found: Any = body["checkpoints"]
    assert [(c["checkpoint"], c["label"], c["log_seq"]) for c in found] == [
        (1, "before the refactor", 3)
    ]
    status, body = await get_json(
        http, gw.url + "/api/agents/ghost/checkpoints", gw.headers("viewer")
    )
    assert status == 404 and body["error"]["code"] == "unknown_agent"  # type: ignore[index]
    status, _ = await get_json(http, url)
    assert status == 401


async def test_taking_a_checkpoint_and_rolling_back_check_roles_and_input(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    url = gw.url + "/api/agents/c1/checkpoints"
    status, body = await post(http, url, gw.headers("viewer"), {"label": "x"})
    assert status == 403 and "needs operator" in body["error"]["message"]
    status, body = await post(http, url, gw.headers("operator"), b'{"label": ')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert body["error"]["message"].startswith("invalid checkpoint request: not valid JSON")
    status, body = await post(http, url, gw.headers("operator"), {"label": 5})
    assert status == 400 and "label" in body["error"]["message"]
    status, body = await post(http, url, gw.headers("operator"), {"labels": "x"})
    assert status == 400 and "labels" in body["error"]["message"]
    status, body = await post(http, url, gw.headers("operator"), {"label": "a\nb"})
    assert status == 400 and "`label` must be one line" in body["error"]["message"]
    status, body = await post(http, url, gw.headers("operator"), {"label": "ok"})
    assert status == 404 and body["error"]["code"] == "unknown_agent"  # no actor answers c1
    rollback = gw.url + "/api/agents/c1/rollback"
    status, body = await post(http, rollback, gw.headers("viewer"), {"checkpoint": 1})
    assert status == 403
    status, body = await post(http, rollback, gw.headers("operator"), {"checkpoint": "one"})
    assert status == 400 and "checkpoint" in body["error"]["message"]


async def test_mail_is_sent_and_listed_by_priority(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    await gw.append("m1", *created("m1"))
    url = gw.url + "/api/agents/m1/mail"
    status, body = await post(
        http, url, gw.headers("operator"), {"body": "later", "priority": "low"}
    )
    assert status == 201, body
    assert body["from"] == "test-operator" and body["priority"] == "low" and body["seq"] > 0
    urgent = {"body": "the build is red", "subject": "ci", "priority": "critical"}
    status, body = await post(http, url, gw.headers("admin"), urgent)
    assert status == 201, body
    status, listed = await get_json(http, url, gw.headers("viewer"))
    assert status == 200, listed
    mail: Any = listed["mail"]
    assert [(m["priority"], m["body"], m["from"]) for m in mail] == [
        ("critical", "the build is red", "test-admin"),
        ("low", "later", "test-operator"),
    ]
    status, again = await get_json(http, url + "?limit=1", gw.headers("viewer"))
    assert status == 200 and len(again["mail"]) == 1  # type: ignore[arg-type]
    status, _ = await get_json(http, url, gw.headers("viewer"))
    assert status == 200  # looking took nothing: still two
    status, listed = await get_json(http, url, gw.headers("viewer"))
    assert len(listed["mail"]) == 2  # type: ignore[arg-type]


async def test_mail_refuses_bad_input_with_one_sentence(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    await gw.append("m2", *created("m2"))
    url = gw.url + "/api/agents/m2/mail"
    op = gw.headers("operator")
    status, body = await post(http, url, gw.headers("viewer"), {"body": "hi"})
    assert status == 403
    status, body = await post(http, url, op, b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = await post(http, url, op, {"body": 7})
    assert status == 400 and "body" in body["error"]["message"]
    status, body = await post(http, url, op, {"subject": "no body"})
    assert status == 400 and "body" in body["error"]["message"]
    status, body = await post(http, url, op, {"body": "  "})
    assert status == 400 and "empty" in body["error"]["message"]
    status, body = await post(http, url, op, {"body": "hi", "priority": "urgent"})
    assert status == 400 and "critical, high, normal, low" in body["error"]["message"]
    status, body = await post(http, url, op, {"body": "hi", "ttl_s": 3.1e307})
    assert status == 400 and "must be 0 (no TTL) to 31536000 s" in body["error"]["message"]
    status, body = await post(http, url, op, {"body": "x" * (MAX_REQUEST_BYTES + 10)})
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert "request body" in body["error"]["message"]
    status, body = await post(http, gw.url + "/api/agents/ghost/mail", op, {"body": "hi"})
    assert status == 404 and body["error"]["code"] == "unknown_agent"
    status, body = await get_json(http, gw.url + "/api/agents/ghost/mail", gw.headers("viewer"))
    assert status == 404
    status, body = await get_json(http, url + "?limit=0", gw.headers("viewer"))
    assert status == 400 and "limit" in body["error"]["message"]  # type: ignore[index]
    status, listed = await get_json(http, url, gw.headers("viewer"))
    assert listed["mail"] == []  # nothing refused was stored


async def test_health_report_and_samples_live_and_at_rest(
    gw: Gateway, http: aiohttp.ClientSession, bus: Client
) -> None:
    await gw.append("h1", *created("h1"))
    url = gw.url + "/api/agents/h1/health"
    status, body = await get_json(http, url, gw.headers("viewer"))
    assert status == 503 and "no health service" in body["error"]["message"]  # type: ignore[index]
    async with running_health(bus, HealthConfig(sample_period_s=60)):
        for _ in range(100):
            status, body = await get_json(http, url, gw.headers("viewer"))
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200, body
        assert body["agent"] == "h1" and body["lifecycle"] == "RUNNING"
        status, body = await get_json(http, url + "?kind=weather", gw.headers("viewer"))
        assert status == 400 and "kind" in body["error"]["message"]  # type: ignore[index]
        status, body = await get_json(
            http, gw.url + "/api/agents/ghost/health", gw.headers("viewer")
        )
        assert status == 404 and body["error"]["code"] == "unknown_agent"  # type: ignore[index]

    ws_url = await gw.ws_url(http, "/ws/events?agent=h1", "viewer")
    async with http.ws_connect(ws_url) as ws:
        await asyncio.sleep(0.05)
        for cpu in (10.0, 42.5):  # the same agent twice: both, or only the latest, arrive
            obs = Observation(
                agent="h1",
                at=datetime.now(UTC),
                kind="sample",
                sample=Sample(cpu_percent=cpu, rss_mb=123.4, processes=3),
            )
            await bus.publish(subjects.health("h1"), msgspec.json.encode(obs))
        await bus.publish(subjects.health("other"), msgspec.json.encode(obs))
        await bus.flush()
        seen: list[dict[str, Any]] = []
        while not any(s["sample"]["cpu_percent"] == 42.5 for s in seen):
            msg = await ws.receive_json(timeout=30)
            seen.extend(msg.get("health", []))
    assert {s["agent"] for s in seen} == {"h1"}  # the filter holds for samples too
    status, body = await get_json(http, gw.url + "/api/health", gw.headers("viewer"))
    assert status == 200
    latest: Any = body["samples"]
    assert latest["h1"]["sample"] == {
        "cpu_percent": 42.5,
        "rss_mb": 123.4,
        "threads": 0,
        "open_files": 0,
        "processes": 3,
    }
    assert set(latest) == {"h1", "other"}


async def test_the_new_routes_are_in_openapi(gw: Gateway, http: aiohttp.ClientSession) -> None:
    status, doc = await get_json(http, gw.url + "/openapi.json")
    assert status == 200
    paths: Any = doc["paths"]
    assert {"get", "post"} <= set(paths["/api/agents/{agent}/checkpoints"])
    assert {"get", "post"} <= set(paths["/api/agents/{agent}/mail"])
    assert "get" in paths["/api/agents/{agent}/health"] and "get" in paths["/api/health"]
    post_mail = paths["/api/agents/{agent}/mail"]["post"]
    assert post_mail["description"].startswith("Needs an operator token")
    schemas: Any = doc["components"]["schemas"]  # type: ignore[index]
    assert {"SendMail", "TakeCheckpoint", "InboxReply", "CheckpointsReply", "HealthReply"} <= set(
        schemas
    )

"""The notifications service against a real nats-server and a local webhook server (the only
stand-in: the outside world)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from infra import fleetkey
from infra.config import Settings
from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams
from schemas import subjects
from schemas.chain import Position
from schemas.notify import Notice
from schemas.states import Activity
from services import notifier as n
from tests.fleet.gateway_fixtures import activity, created, run_gateway
from tests.local_http import serving


@dataclass
class Outside:
    """A local HTTP server standing in for Slack/Discord and ntfy."""

    url: str
    hooks: list[dict[str, Any]] = field(default_factory=list)
    pushes: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    fail_next: int = 0
    got: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def outside() -> AsyncIterator[Outside]:
    box = Outside("")

    async def hook(request: web.Request) -> web.Response:
        if box.fail_next:
            box.fail_next -= 1
            return web.Response(status=503)
        box.hooks.append(await request.json())
        box.got.set()
        return web.Response(text="ok")

    async def ntfy(request: web.Request) -> web.Response:
        box.pushes.append((await request.text(), dict(request.headers)))
        box.got.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/fleet-topic", ntfy)
    async with serving(app) as port:
        box.url = f"http://127.0.0.1:{port}"
        yield box


def config(outside: Outside, tmp_path: Path, **limits: Any) -> n.NotifyConfig:
    channels: dict[str, n.Channel] = {
        "chat": n.Webhook(url=outside.url + "/hook"),
        "phone": n.Ntfy(url=outside.url + "/fleet-topic"),
        "file": n.LogFile(path=str(tmp_path / "notifications.log")),
    }
    return n.NotifyConfig(channels=channels, backoff_s=0.01, **limits)


async def until(check: Any, what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_agent_waiting_for_input_reaches_the_webhook_and_the_phone(
    nats_url: str, state_dir: Path, outside: Outside, tmp_path: Path
) -> None:
    settings = Settings(state_dir=state_dir)
    (state_dir / n.CONFIG_FILE).write_text(
        f"channels:\n  chat: {{type: webhook, url: '{outside.url}/hook'}}\n"
        f"  phone: {{type: ntfy, url: '{outside.url}/fleet-topic'}}\n"
        "  ui: {type: bus}\n"
    )
    nc = await connect(nats_url)
    await ensure_streams(nc.jetstream())
    ui: list[Any] = []

    async def on_ui(msg: Any) -> None:
        ui.append(msg)

    await nc.subscribe(subjects.ALL_NOTIFY, cb=on_ui)
    # the test is the agent's actor: it signs with the fleet key, which the service verifies
    store = EventStore(nc, mac_key=fleetkey.load_or_create(state_dir))
    async with n.running(settings, nc):
        position = await store.append("a1", created("a1"), Position())
        await store.append(
            "a1", [activity("a1", Activity.AWAITING_INPUT, "Proceed? [y/n]")], position
        )
        await until(lambda: outside.hooks and outside.pushes and ui, "the notification")
    assert outside.hooks == [
        {
            "text": ":warning: [warning] agent a1 is waiting for input: Proceed? [y/n]",
            "content": ":warning: [warning] agent a1 is waiting for input: Proceed? [y/n]",
        }
    ]
    body, headers = outside.pushes[0]
    assert body == "agent a1 is waiting for input: Proceed? [y/n]"
    assert headers["Priority"] == "high"
    assert len(ui) == 1 and ui[0].subject == subjects.notify("warning")  # not read back
    assert msgspec.json.decode(ui[0].data, type=Notice).detail == "Proceed? [y/n]"
    await nc.close()


async def test_retries_with_backoff_dedupe_and_rate_limit(outside: Outside, tmp_path: Path) -> None:
    notifier = n.Notifier(config(outside, tmp_path, burst=2, rate_per_minute=0.001))
    outside.fail_next = 2
    failed = Notice(kind="lifecycle.ERROR", severity="critical", message="agent a1 failed: x")
    assert await notifier.notify(failed) == ["chat", "phone", "file"]
    assert await notifier.notify(failed) == []  # the same notice within the dedupe window
    await notifier.drain()
    assert [h["text"] for h in outside.hooks] == [":rotating_light: [critical] agent a1 failed: x"]
    metrics = notifier.metrics
    assert metrics.notified.labels("chat")._value.get() == 1  # delivered on the third attempt
    other = Notice(kind="lifecycle.ERROR", severity="critical", message="agent a2 failed: y")
    third = Notice(kind="lifecycle.ERROR", severity="critical", message="agent a3 failed: z")
    await notifier.notify(other)
    await notifier.notify(third)  # over the burst of 2 per channel
    await notifier.drain()
    assert len(outside.hooks) == 2
    assert metrics.notify_failed.labels("chat", "rate_limited")._value.get() == 1
    assert (tmp_path / "notifications.log").read_text().count("\n") == 2
    outside.fail_next = 10
    notifier.limiter = n.RateLimiter(100, 100)
    await notifier.notify(Notice(kind="alert.X", severity="warning", message="down"))
    await notifier.drain()
    assert metrics.notify_failed.labels("chat", "error")._value.get() == 1
    await notifier.close()


async def test_notices_of_other_services_and_alertmanager_reach_the_same_channels(
    nats_url: str, state_dir: Path, outside: Outside, tmp_path: Path
) -> None:
    nc = await connect(nats_url)
    await ensure_streams(nc.jetstream())
    settings = Settings(state_dir=state_dir)
    (state_dir / n.CONFIG_FILE).write_text(
        f"channels:\n  chat: {{type: webhook, url: '{outside.url}/hook'}}\n"
    )
    async for gw in run_gateway(nats_url, state_dir):
        async with n.running(settings, nc):
            health = {
                "agent": "a7",
                "reason": "recovery exhausted: web down",
                "source": "health",
                "at": "2025-01-01T00:00:00Z",
                "severity": "critical",
            }
            await nc.publish(subjects.notify("critical"), msgspec.json.encode(health))
            alert = {
                "status": "firing",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {
                            "alertname": "FleetAgentError",
                            "severity": "critical",
                            "agent": "a8",
                        },
                        "annotations": {"summary": "agent a8 is in ERROR"},
                    }
                ],
            }
            async with aiohttp.ClientSession() as http:
                url = gw.url + "/api/alertmanager"
                async with http.post(url, json=alert, headers=gw.headers("operator")) as r:
                    assert r.status == 200, await r.text()
            await until(lambda: len(outside.hooks) >= 2, "both notices")
    texts = sorted(h["text"] for h in outside.hooks)
    assert texts == [
        ":rotating_light: [critical] agent a7 needs a person: recovery exhausted: web down",
        ":rotating_light: [critical] agent a8 is in ERROR",
    ]
    await nc.close()

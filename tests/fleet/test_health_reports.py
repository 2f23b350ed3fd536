"""report_health delivered until the agent acknowledges it: on a real fleet whose network
loses a report's first try and the second try's reply, and the Reporter alone against a
stand-in agent (a newer verdict replaces an older one; a gone agent ends a delivery)."""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.nats import connect
from schemas import events as e
from schemas import subjects
from services.health import Reporter
from tests.conftest import Fleet
from tests.fleet.health_fixtures import FAST, running_health
from tests.fleet.helpers import command, until
from tests.fleet.test_health import (
    GUARD_S,
    events,
    signal_all,
    spawn_with,
    stop_service,
    unanswering_api,
    unhealthy_reports,
)


class LossyLink:
    """The health service's NATS connection on a network that loses, for every report_health
    (each command id), the first try (the agent never gets it) and the second try's reply
    (the agent applies it, unheard). Everything else passes through."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.tries: collections.Counter[str] = collections.Counter()
        self.replies: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        cmd = msgspec.json.decode(payload) if payload.startswith(b"{") else {}
        if cmd.get("type") != "report_health":
            return await self._nc.request(subject, payload, timeout=timeout, headers=headers)
        key = cmd.get("id") or uuid.uuid4().hex  # without an id, every try is a first one
        self.tries[key] += 1
        if self.tries[key] == 1:
            raise nats.errors.TimeoutError  # lost on the way to the agent
        if self.tries[key] == 2:
            await self._nc.publish(subject, payload, reply=self._nc.new_inbox(), headers=headers)
            raise nats.errors.TimeoutError  # the reply is lost on the way back
        msg = await self._nc.request(subject, payload, timeout=timeout, headers=headers)
        self.replies[key].append(msgspec.json.decode(msg.data))
        return msg


async def test_a_lost_report_is_sent_again_until_acknowledged_and_recorded_once(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    link = LossyLink(nc)
    async with running_health(cast(Client, link), FAST):
        await spawn_with(fleet, repo, "lr1", unanswering_api())

        async def healthy() -> bool:  # recorded after any earlier report (one at a time)
            api = (await command(nc, "lr1", "show"))["agent"]["services"].get("api") or {}
            return api.get("healthy") is True

        await until(healthy, "the healthy report, retried", GUARD_S)
        before = len(await unhealthy_reports(nc, "lr1"))
        stopped = await stop_service(nc, "lr1")
        try:  # stopped until the report is acknowledged: a newer verdict would replace it

            async def reported() -> list[e.ServiceHealth]:
                return (await unhealthy_reports(nc, "lr1"))[before:]

            found = await until(reported, "the unhealthy report, retried", GUARD_S)
            report_id = found[0].causation
            assert report_id and link.tries[report_id] >= 2, link.tries

            async def acknowledged() -> list[dict[str, Any]]:
                return link.replies[report_id]

            reply = (await until(acknowledged, "the report's retry to be answered", GUARD_S))[0]
        finally:
            signal_all(stopped, signal.SIGCONT)
        assert reply["ok"] is True and reply.get("repeated") is True, reply  # applied once
        assert link.tries[report_id] == 3  # acknowledged: not sent again
    reports = [
        ev.causation
        for ev in await events(nc, "lr1")
        if isinstance(ev, e.ServiceHealth) and ev.actor == "service:health"
    ]
    assert reports and all(n == 1 for n in collections.Counter(reports).values()), reports
    assert set(reports) <= set(link.tries), "every recorded report came through the link"


async def test_a_newer_verdict_replaces_an_unacknowledged_one_and_a_gone_agent_ends_it(
    nats_url: str,
) -> None:
    """The Reporter alone, against a stand-in for the agent on a real server: silent at first
    (every try is retried under its id), then answering; the older verdict is never sent
    after the newer one, and `unknown_agent` ends a delivery at once."""
    nc = await connect(nats_url)
    tries: list[dict[str, Any]] = []
    answering = asyncio.Event()

    async def agent(msg: Msg) -> None:
        cmd = msgspec.json.decode(msg.data)
        tries.append(cmd)
        if subjects.agent_from_command(msg.subject) == "gone":
            await msg.respond(b'{"ok": false, "error": {"code": "unknown_agent", "message": "-"}}')
        elif answering.is_set():
            await msg.respond(b'{"ok": true}')

    await nc.subscribe(subjects.ALL_COMMANDS, cb=agent)
    reporter = Reporter(nc, timeout_s=0.1, backoff_s=(0.05, 0.1))

    def settled(agent_id: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return not reporter.pending(agent_id)

        return check

    async def tried_thrice() -> bool:
        return len(tries) >= 3

    try:
        reporter.report("x1", "api", False, "liveness", "no answer")
        await until(tried_thrice, "three tries of the unanswered report")
        reporter.report("x1", "api", True, "liveness", "HTTP 200")
        answering.set()
        await until(settled("x1"), "the newer report to be acknowledged")
        reporter.report("gone", "api", False, "liveness", "no answer")
        await until(settled("gone"), "the delivery to a gone agent to end")
        await asyncio.sleep(0.3)  # and nothing is sent after that
    finally:
        await reporter.close()
        await nc.close()
    ids = list(dict.fromkeys(t["id"] for t in tries))
    assert len(ids) == 3, tries  # the older report, the newer one, the one to the gone agent
    older, newer, gone = ([t for t in tries if t["id"] == i] for i in ids)
    assert len(older) >= 3 and all(t["healthy"] is False for t in older)
    assert all(t["healthy"] is True for t in newer)
    last_older = max(i for i, t in enumerate(tries) if t["id"] == ids[0])
    assert last_older < tries.index(newer[0]), "the older verdict was sent after the newer"
    assert len(gone) == 1  # refused with unknown_agent: not retried

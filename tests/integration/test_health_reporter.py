"""The health service's reports are delivered through an agent's busy spells: `busy` means
"not now", so the same report (one id) is sent again until the agent takes it."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.msg import Msg

from infra.nats import connect
from infra.natsserver import NatsServer
from schemas import replies, subjects
from schemas.errors import AgentBusy
from services.health import Reporter


async def test_a_report_refused_busy_is_sent_again_until_taken(nats_server: NatsServer) -> None:
    agent = await connect(nats_server.url)
    health = await connect(nats_server.url)
    tries: list[dict[str, object]] = []
    taken = asyncio.Event()

    async def answer(msg: Msg) -> None:
        tries.append(msgspec.json.decode(msg.data))
        if len(tries) < 3:
            await msg.respond(replies.error(AgentBusy("a1", "report_health", "with stop", 1.0)))
            return
        await msg.respond(replies.ok())
        taken.set()

    await agent.subscribe(subjects.command("a1"), cb=answer)
    await agent.flush()
    reporter = Reporter(health, timeout_s=30, backoff_s=(0.01, 0.05))
    try:
        reporter.report("a1", "web", False, "liveness", "HTTP 500")
        await asyncio.wait_for(taken.wait(), 60)
        assert len(tries) == 3
        assert len({t["id"] for t in tries}) == 1  # one report, one id: applied once

        async def delivered() -> None:
            while reporter.pending("a1"):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(delivered(), 60)  # the third answer ended the delivery
    finally:
        await reporter.close()
        await agent.close()
        await health.close()

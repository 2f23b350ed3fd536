"""Commands the health service sends to agents: one-shot ones, and health reports delivered
until the agent acknowledges them.

A changed verdict is sent as `report_health`. Sent once, one lost request or an agent that did
not answer in time (its actor restarting, its loop busy) lost the report for good, since the
probe calls back only when its verdict changes again. So each (agent, service) has one
delivery task that sends the latest verdict under one command id until a reply says `ok`:

- a retry keeps the id, so an agent that did apply it (only its reply was lost) answers
  without recording it twice (actors/agent/dedupe.py);
- a newer verdict replaces the task (a new id): the old one is never sent again, and since
  NATS keeps one connection's order and the agent takes commands in arrival order, the agent
  never ends on the older verdict;
- it stops when the agent is gone (`unknown_agent`), refuses for good, or the health service
  forgets the service (its probes stopped: it exited, the agent left RUNNING).

A delivery runs in a task of its own, never in the probe's: a probe that waited on the agent
would stop probing, and cancelling it (the service restarted) would cancel the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from schemas import replies, subjects
from services.health.model import BY

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
# Refusals that say "not now" rather than "no": the same command may succeed when retried.
RETRY_CODES = frozenset(
    {"busy", "concurrent_update", "rate_limited", "internal", "store_unavailable", "timeout"}
)
GONE = "unknown_agent"


async def command(
    nc: Client, agent_id: str, type_: str, timeout: float = 10.0, **fields: Any
) -> dict[str, Any] | None:
    """A command to the agent; its reply, or None if it did not answer (logged, as a refusal
    is: the ladder goes on)."""
    payload = {"type": type_, "by": BY, **fields}
    try:
        headers = {subjects.TIMEOUT_HEADER: f"{timeout:g}"}  # a busy agent says so in time
        msg = await nc.request(
            subjects.command(agent_id), _encode(payload), timeout=timeout, headers=headers
        )
    except (TimeoutError, NoRespondersError) as err:
        log.warning("health: agent %s did not answer %s: %r", agent_id, type_, err)
        return None
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if replies.is_error(reply):
        log.warning("health: agent %s refused %s: %s", agent_id, type_, reply.get("error"))
    return reply


@dataclass(frozen=True)
class Report:
    """One verdict for the agent, under the command id every try of it carries."""

    agent: str
    service: str
    healthy: bool
    probe: str
    detail: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def payload(self) -> dict[str, Any]:
        return {"service": self.service, "healthy": self.healthy, "probe": self.probe,
                "detail": self.detail, "id": self.id}  # fmt: skip


class Reporter:
    """Delivers each (agent, service)'s latest verdict until the agent acknowledges it."""

    def __init__(
        self,
        nc: Client,
        *,
        timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.first_s, self.max_s = backoff_s
        self.rand = rand
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def report(self, agent: str, service: str, healthy: bool, probe: str, detail: str) -> None:
        """Deliver this verdict from now on, in place of any older one not yet delivered."""
        key = (agent, service)
        old = self._tasks.pop(key, None)
        if old is not None:
            old.cancel()
        report = Report(agent, service, healthy, probe, detail)
        self._tasks[key] = asyncio.get_running_loop().create_task(self._deliver(report))

    def forget(self, agent: str, service: str | None = None) -> None:
        """Stop delivering to the agent (for one service, or all): its verdicts are void."""
        for key in [k for k in self._tasks if k[0] == agent and service in (None, k[1])]:
            self._tasks.pop(key).cancel()

    def pending(self, agent: str) -> list[str]:
        """The agent's services with a report not yet acknowledged."""
        return sorted(s for a, s in self._tasks if a == agent)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, report: Report) -> None:
        key = (report.agent, report.service)
        wait_s = self.first_s
        try:
            while True:
                try:
                    reply = await command(
                        self.nc, report.agent, "report_health", self.timeout_s, **report.payload()
                    )
                except NatsError as err:  # the connection is reconnecting, say: try again
                    log.warning("health: report to agent %s not sent: %r", report.agent, err)
                    reply = None
                if self._settled(report, reply):
                    return
                await asyncio.sleep(wait_s * (0.5 + self.rand()))  # jitter: agents not in step
                wait_s = min(self.max_s, wait_s * 2)
        finally:
            with contextlib.suppress(KeyError):
                if self._tasks[key] is asyncio.current_task():
                    del self._tasks[key]

    def _settled(self, report: Report, reply: dict[str, Any] | None) -> bool:
        """Whether this try ends the delivery: acknowledged, or refused for good."""
        if reply is None:
            return False
        if reply.get("ok") is True:
            return True
        code = str((reply.get("error") or {}).get("code", ""))
        if code == GONE:
            return True
        if code not in RETRY_CODES:
            log.warning("health: agent %s refused the report %s for good", report.agent, report)
            return True
        return False

"""The health service's recovery ladder: a failure that persists climbs it (schemas.recovery).

Each rung is recorded with `escalate` (`recovery.escalated`), then carried out by a command
to the agent (`restart_service`, `recreate_session`, `new_ports`, `rollback`, `restart`);
the last rung, `ask_human`, publishes a notice on `fleet.notify.critical`. An agent whose
tmux session died goes straight to `recreate_session`. One climb at a time per agent
(`Watched.busy`); the attempts are kept until the agent has been healthy for `stable_s`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.client import Client

from schemas import events as e
from schemas import recovery as ladder
from schemas import subjects
from schemas.health import Notice, Observation
from schemas.states import Lifecycle
from schemas.templates import Template
from services.health.agent_commands import command
from services.health.model import HealthConfig, Watched, now

log = logging.getLogger(__name__)

L = Lifecycle
_encode = msgspec.json.Encoder().encode

Observe = Callable[[Watched, Observation], Awaitable[None]]
Background = Callable[[Coroutine[Any, Any, None]], None]


class RecoveryLadder:
    def __init__(
        self, nc: Client, config: HealthConfig, observe: Observe, background: Background
    ) -> None:
        self.nc = nc
        self.config = config
        self.observe = observe
        self.background = background

    def note_attempt(self, w: Watched, ev: e.RecoveryEscalated) -> None:
        """A rung in the log: ours (already counted) or another's (a replay, a person)."""
        if (now() - ev.at).total_seconds() > self.config.stable_s:
            return  # a climb long over
        for a in w.attempts:
            if a.rung == ev.rung and a.attempt == ev.attempt:
                return
        w.attempts.append(ladder.Attempt(rung=ev.rung, attempt=ev.attempt, at=ev.at))

    def failing(self, w: Watched, at: datetime) -> list[tuple[str, str]]:
        """(service, why) for each service that has failed for longer than a blip."""
        found = []
        for name, svc in w.state.services.items():
            if svc.state == "exited":
                since = w.exited_at.get(name)
                if svc.exit_code == 0 or since is None:
                    continue  # completed, or an exit this service has not seen happen
                if (at - since).total_seconds() >= self._grace(w, name):
                    found.append((name, f"exited (status {svc.exit_code})"))
            elif w.verdict(name) is False:
                found.append((name, f"is unhealthy ({w.details.get(name, '')})"))
        return found

    def _grace(self, w: Watched, service: str) -> float:
        spec = w.template.services.get(service) if w.template else None
        own = 0.0 if spec is None or spec.restart.policy == "no" else spec.restart.backoff.max_s
        return own + self.config.exit_grace_s

    async def tick(self, agents: Iterable[Watched]) -> None:
        """Weigh each agent (of this node) that is not already climbing."""
        at = now()
        for w in agents:
            if w.busy or w.state.lifecycle not in (L.RUNNING, L.ERROR):
                continue
            if w.state.lifecycle is L.ERROR and not w.attempts:
                if w.state.reason.startswith(ladder.SESSION_GONE):
                    self._rebuild_session(w, at)
                continue  # any other failure outside recovery: a person's to look at
            self._weigh(w, at)

    def _rebuild_session(self, w: Watched, at: datetime) -> None:
        """The tmux server died under the agent: straight to the recreate_session rung (no
        service can be restarted in a session that is gone); later rungs follow if it fails."""
        w.busy = True
        step = ladder.Climb(rung="recreate_session", attempt=1)
        w.attempts.append(ladder.Attempt(rung=step.rung, attempt=1, at=at))
        self.background(self.climb(w, step, "session", "is gone (the tmux server died)"))

    def _weigh(self, w: Watched, at: datetime) -> None:
        failing = self.failing(w, at)
        if not failing:
            if w.attempts and w.healthy_since is None:
                w.healthy_since = at
            elif not ladder.still_climbing(
                w.attempts, healthy_since=w.healthy_since, now=at, stable_s=self.config.stable_s
            ):
                w.attempts.clear()
                w.healthy_since = None
            return
        w.healthy_since = None
        spec = w.template.recovery if w.template else Template(name="-").recovery
        decision = ladder.next_rung(
            spec, w.attempts, now=at, healthy_checkpoint=w.healthy_checkpoint is not None,
            rand=random.random(),
        )  # fmt: skip
        if isinstance(decision, ladder.Climb):
            w.busy = True
            w.attempts.append(ladder.Attempt(rung=decision.rung, attempt=decision.attempt, at=at))
            self.background(self.climb(w, decision, *failing[0]))

    async def climb(self, w: Watched, step: ladder.Climb, service: str, why: str) -> None:
        """Record the rung, then carry it out."""
        reason = f"service {service} {why}"
        try:
            await command(
                self.nc, w.agent_id, "escalate", rung=step.rung, attempt=step.attempt,
                reason=reason,
            )  # fmt: skip
            obs = Observation(
                agent=w.agent_id, at=now(), kind="recovery", service=service, rung=step.rung,
                attempt=step.attempt, detail=reason,
            )  # fmt: skip
            await self.observe(w, obs)
            await self._carry_out(w, step.rung, service, reason)
        finally:
            w.busy = False

    async def _carry_out(self, w: Watched, rung: str, service: str, reason: str) -> None:
        timeout, agent = self.config.command_timeout_s, w.agent_id
        match rung:
            case "restart_service":
                await command(self.nc, agent, "restart_service", timeout, service=service)
            case "recreate_session" | "new_ports":
                await command(self.nc, agent, rung, timeout)
            case "rollback":
                await command(self.nc, agent, "rollback", timeout, checkpoint=w.healthy_checkpoint)
            case "respawn":
                await command(self.nc, agent, "restart", timeout)
            case "ask_human":
                notice = Notice(
                    agent=agent, reason=f"recovery exhausted: {reason}", at=now(), service=service
                )
                await self.nc.publish(subjects.notify("critical"), _encode(notice))
            case _:
                log.warning("health: agent %s: unknown rung %r skipped", agent, rung)

"""The health service: probes, psutil samples and the recovery ladder, for the agents of one node.

It follows every event (durable consumer `health`, or `health-<node>` when several run, one
per node) and keeps each agent's state by folding them, so it knows the agent's services
(pid, port, state), its ports, its tmux session and the template it was spawned from (the
resolved template recorded in `agent.created`). For each running service it runs the
template's liveness and readiness probes (infra.probes) and, always, a process check of the
service's pid; every few seconds it samples CPU, RSS, threads and open files of the agent's
process tree (the tmux pane processes and their descendants). Observations go to
`fleet.health.<agent>` and into a bounded history that `fleet.ctl.health` answers with.

A verdict that changes is sent to the agent as `report_health`, which records
`service.health`. A failure that persists climbs the recovery ladder (schemas.recovery):
each rung is recorded with `escalate` (`recovery.escalated`), then carried out by a command
to the agent (`restart_service`, `recreate_session`, `new_ports`, `rollback`, `restart`);
the last rung, `ask_human`, publishes a notice on `fleet.notify.critical`.

With a `node` configured, only agents whose actor runs on that node are watched (the actor
says where it runs in its `show` reply), so probes run next to the services they check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from infra import probes
from infra.eventstore import EventStore, Stored
from schemas import events as e
from schemas import recovery as ladder
from schemas import replies, subjects
from schemas.agent import AgentState, evolve
from schemas.errors import FleetError, UnknownAgent
from schemas.health import HealthRequest, Notice, Observation
from schemas.ports import lease_name
from schemas.states import Lifecycle
from schemas.templates import ServiceSpec, Template, decode_spec
from services.health_sampling import Sampler

log = logging.getLogger(__name__)

L = Lifecycle
BY = "service:health"
KINDS = ("liveness", "readiness")
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class HealthConfig:
    node: str = ""  # watch only agents whose actor runs on this (Ray) node; "" for all
    sample_period_s: float = 2.0
    tick_s: float = 0.25  # how often persisting failures are weighed against the ladder
    history: int = 500  # observations kept per agent
    exit_grace_s: float = 1.0  # beyond the service's own restart backoff, before it counts
    stable_s: float = ladder.STABLE_S
    command_timeout_s: float = 120.0  # a respawn stops and brings up the whole agent

    @property
    def durable(self) -> str:
        return f"health-{self.node}"[:64] if self.node else "health"


@dataclass
class Watched:
    """What the health service knows and decides about one agent."""

    state: AgentState
    seq: int
    history: deque[Observation]
    template: Template | None = None
    node: str | None = None  # where its actor runs; None until asked
    probes: dict[tuple[str, str], asyncio.Task[Any]] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], bool] = field(default_factory=dict)  # (service, kind)
    details: dict[str, str] = field(default_factory=dict)
    exited_at: dict[str, datetime] = field(default_factory=dict)
    attempts: list[ladder.Attempt] = field(default_factory=list)
    healthy_since: datetime | None = None
    healthy_checkpoint: int | None = None
    busy: bool = False

    @property
    def agent_id(self) -> str:
        return self.state.agent_id

    def verdict(self, service: str) -> bool | None:
        """False if any check of the service fails, True if all it has pass, None unknown."""
        found = [v for (s, _), v in self.verdicts.items() if s == service]
        if not found:
            return None
        return all(found)


def now() -> datetime:
    return datetime.now(UTC)


class HealthService:
    def __init__(self, nc: Client, config: HealthConfig | None = None) -> None:
        self.nc = nc
        self.config = config or HealthConfig()
        self.store = EventStore(nc)
        self.agents: dict[str, Watched] = {}
        self.sampler = Sampler()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then stop every probe and loop."""
        sub = await self.nc.subscribe(subjects.control("health"), cb=self._on_request)
        loops = [
            asyncio.create_task(self.store.follow(self.config.durable, self.handle, stop=stop)),
            asyncio.create_task(self._every(self.config.tick_s, self.tick, stop)),
            asyncio.create_task(self._every(self.config.sample_period_s, self.sample, stop)),
        ]
        try:
            done, _ = await asyncio.wait(
                [*loops, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task in loops and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await sub.unsubscribe()
            for task in [*loops, *self._tasks, *self._probe_tasks()]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)

    def _probe_tasks(self) -> list[asyncio.Task[Any]]:
        return [t for w in self.agents.values() for t in w.probes.values()]

    async def _every(self, period: float, step: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await step()
            except Exception:
                log.exception("health: %s failed; carrying on", getattr(step, "__name__", step))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("health: background step failed", exc_info=task.exception())

    def mine(self, w: Watched) -> bool:
        return not self.config.node or w.node == self.config.node

    # -- following the log ------------------------------------------------------------------

    async def handle(self, stored: Stored) -> None:
        """One event of any agent: keep its state, then react to what changed."""
        ev = stored.event
        if ev is None:
            return
        w = self.agents.get(ev.agent_id)
        if w is None:
            w = await self._first_sight(ev.agent_id)
            if w is None:
                return
        if isinstance(ev, e.RecoveryEscalated):
            self._note_attempt(w, ev)
        if stored.seq <= w.seq:
            return  # already in the state loaded at first sight
        w.state, w.seq = evolve(w.state, ev), stored.seq
        await self._react(w, ev)

    async def _first_sight(self, agent_id: str) -> Watched | None:
        loaded = await self.store.load(agent_id)
        if loaded.state.removed:
            return None
        w = Watched(loaded.state, loaded.position.seq, deque(maxlen=self.config.history))
        w.template = _template(w.state)
        for name, svc in w.state.services.items():
            if svc.state == "exited":
                w.exited_at[name] = now()  # when is not in the state: from now on, then
        self.agents[agent_id] = w
        if w.state.lifecycle is L.RUNNING:
            self._background(self._locate_then_probe(w))
        return w

    async def _react(self, w: Watched, ev: e.AgentEvent) -> None:
        match ev:
            case e.AgentCreated():
                w.template = _template(w.state)
            case e.LifecycleChanged(to=L.RUNNING):
                self._background(self._locate_then_probe(w))
            case e.LifecycleChanged(to=to):
                self._stop_probes(w)
                if to is L.SPAWNING:
                    w.node = None  # a new incarnation may run elsewhere
            case e.ServiceStarted(service=name):
                w.exited_at.pop(name, None)
                self._stop_probes(w, name)
                if self.mine(w):
                    self._start_probes(w, name)
            case e.ServiceExited(service=name):
                self._stop_probes(w, name)
                w.exited_at[name] = ev.at
            case e.CheckpointTaken(checkpoint=n):
                services = w.state.services
                if services and all(w.verdict(s) is True for s in services):
                    w.healthy_checkpoint = n
            case e.AgentRemoved():
                self._stop_probes(w)
                del self.agents[w.agent_id]
            case _:
                pass

    def _note_attempt(self, w: Watched, ev: e.RecoveryEscalated) -> None:
        """A rung in the log: ours (already counted) or another's (a replay, a person)."""
        if (now() - ev.at).total_seconds() > self.config.stable_s:
            return  # a climb long over
        for a in w.attempts:
            if a.rung == ev.rung and a.attempt == ev.attempt:
                return
        w.attempts.append(ladder.Attempt(rung=ev.rung, attempt=ev.attempt, at=ev.at))

    # -- probes -----------------------------------------------------------------------------

    async def _locate_then_probe(self, w: Watched) -> None:
        if self.config.node and w.node is None:
            reply = await self._command(w.agent_id, "show", timeout=5.0)
            actor = ((reply or {}).get("agent") or {}).get("actor") or {}
            w.node = str(actor.get("node") or "")
        if self.mine(w) and w.state.lifecycle is L.RUNNING:
            for name, svc in w.state.services.items():
                if svc.state == "running" and not any(s == name for s, _ in w.probes):
                    self._start_probes(w, name)

    def _start_probes(self, w: Watched, service: str) -> None:
        spec = w.template.services.get(service) if w.template else None
        if spec is None:
            return
        ports = service_ports(w.state, service, spec)
        cwd = str(_join(w.state.worktree, spec.cwd))
        for kind in KINDS:
            probe = getattr(spec, kind)
            if probe is None or probe.log is not None:
                continue  # log lines are the agent's to read (startup/readiness waits)

            async def changed(ok: bool, result: probes.ProbeResult, kind: str = kind) -> None:
                await self.verdict(w, service, kind, ok, result.detail, result.ms)

            run = probes.run(probe, ports=ports, cwd=cwd, on_change=changed)
            w.probes[(service, kind)] = asyncio.ensure_future(run)

    def _stop_probes(self, w: Watched, service: str | None = None) -> None:
        for key in [k for k in w.probes if service is None or k[0] == service]:
            w.probes.pop(key).cancel()
        for key in [k for k in w.verdicts if service is None or k[0] == service]:
            del w.verdicts[key]

    async def verdict(
        self, w: Watched, service: str, kind: str, ok: bool, detail: str, ms: float = 0.0
    ) -> None:
        """A check changed its verdict: publish it, and tell the agent if the service's did."""
        before = w.verdict(service)
        w.verdicts[(service, kind)] = ok
        w.details[service] = f"{kind}: {detail}"
        obs = Observation(
            agent=w.agent_id, at=now(), kind="probe", service=service, probe=kind, ok=ok,
            detail=detail, ms=round(ms, 3),
        )  # fmt: skip
        await self.observe(w, obs)
        after = w.verdict(service)
        if after is not None and after != before:
            await self._command(
                w.agent_id, "report_health", service=service, healthy=after, probe=kind,
                detail=detail,
            )  # fmt: skip

    async def observe(self, w: Watched, obs: Observation) -> None:
        w.history.append(obs)
        await self.nc.publish(subjects.health(w.agent_id), _encode(obs))

    # -- sampling ---------------------------------------------------------------------------

    async def sample(self) -> None:
        """psutil figures of each watched agent's tree, and a process check of its services."""
        for w in list(self.agents.values()):
            s = w.state
            if not self.mine(w) or s.lifecycle not in (L.RUNNING, L.PAUSED) or not s.tmux_session:
                continue
            measured = await asyncio.to_thread(self.sampler.measure, w.state)
            if measured is None:
                continue
            sample, alive = measured
            await self.observe(
                w, Observation(agent=w.agent_id, at=now(), kind="sample", sample=sample)
            )
            for name, ok in alive.items():
                if w.verdicts.get((name, "process")) is not ok:
                    detail = "process running" if ok else "process gone"
                    await self.verdict(w, name, "process", ok, detail)

    # -- the ladder -------------------------------------------------------------------------

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

    async def tick(self) -> None:
        at = now()
        for w in list(self.agents.values()):
            if w.busy or not self.mine(w) or w.state.lifecycle not in (L.RUNNING, L.ERROR):
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
        self._background(self.climb(w, step, "session", "is gone (the tmux server died)"))

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
            self._background(self.climb(w, decision, *failing[0]))

    async def climb(self, w: Watched, step: ladder.Climb, service: str, why: str) -> None:
        """Record the rung, then carry it out."""
        reason = f"service {service} {why}"
        try:
            await self._command(
                w.agent_id, "escalate", rung=step.rung, attempt=step.attempt, reason=reason
            )
            obs = Observation(
                agent=w.agent_id, at=now(), kind="recovery", service=service, rung=step.rung,
                attempt=step.attempt, detail=reason,
            )  # fmt: skip
            await self.observe(w, obs)
            await self._carry_out(w, step.rung, service, reason)
        finally:
            w.busy = False

    async def _carry_out(self, w: Watched, rung: str, service: str, reason: str) -> None:
        timeout = self.config.command_timeout_s
        match rung:
            case "restart_service":
                await self._command(w.agent_id, "restart_service", timeout, service=service)
            case "recreate_session" | "new_ports":
                await self._command(w.agent_id, rung, timeout)
            case "rollback":
                await self._command(
                    w.agent_id, "rollback", timeout, checkpoint=w.healthy_checkpoint
                )
            case "respawn":
                await self._command(w.agent_id, "restart", timeout)
            case "ask_human":
                notice = Notice(
                    agent=w.agent_id, reason=f"recovery exhausted: {reason}", at=now(),
                    service=service,
                )  # fmt: skip
                await self.nc.publish(subjects.notify("critical"), _encode(notice))
            case _:
                log.warning("health: agent %s: unknown rung %r skipped", w.agent_id, rung)

    async def _command(
        self, agent_id: str, type_: str, timeout: float = 10.0, **fields: Any
    ) -> dict[str, Any] | None:
        """A command to the agent; a refusal or silence is logged (the ladder goes on)."""
        payload = {"type": type_, "by": BY, **fields}
        try:
            msg = await self.nc.request(
                subjects.command(agent_id), _encode(payload), timeout=timeout
            )
        except (TimeoutError, NoRespondersError) as err:
            log.warning("health: agent %s did not answer %s: %r", agent_id, type_, err)
            return None
        reply: dict[str, Any] = msgspec.json.decode(msg.data)
        if replies.is_error(reply):
            log.warning("health: agent %s refused %s: %s", agent_id, type_, reply.get("error"))
        return reply

    # -- answering --------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        try:
            req: HealthRequest = replies.decode_request(msg.data, HealthRequest, "health request")
            w = self.agents.get(subjects.token(req.agent))
            if w is None or not self.mine(w):
                if self.config.node:
                    return  # the health service of the agent's node answers
                raise UnknownAgent(req.agent)
            reply = replies.ok(**self.report(w, req))
        except FleetError as err:
            reply = replies.error(err)
        if msg.reply:
            await msg.respond(reply)

    def report(self, w: Watched, req: HealthRequest) -> dict[str, Any]:
        rows = [o for o in w.history if not req.kind or o.kind == req.kind]
        services = {
            name: {
                "state": svc.state,
                "pid": svc.pid,
                "healthy": w.verdict(name),
                "checks": {k: v for (s, k), v in w.verdicts.items() if s == name},
            }
            for name, svc in w.state.services.items()
        }
        return {
            "agent": w.agent_id,
            "node": w.node or self.config.node,
            "lifecycle": w.state.lifecycle.value,
            "services": services,
            "recovery": [msgspec.to_builtins(a) for a in w.attempts],
            "history": [msgspec.to_builtins(o) for o in rows[-max(1, req.limit) :]],
        }


def _template(state: AgentState) -> Template | None:
    try:
        return decode_spec(state.template_spec)
    except msgspec.DecodeError as err:
        log.warning("agent %s: its recorded template is unreadable: %s", state.agent_id, err)
        return None


def _join(worktree: str, cwd: str) -> str:
    from pathlib import Path

    return str(Path(worktree or ".") / cwd)


def service_ports(state: AgentState, service: str, spec: ServiceSpec) -> dict[str, int]:
    """The service's own ports by name (its leases `<service>.<name>`), as probes name them."""
    ports = {
        p: state.ports[lease_name(service, p)]
        for p in spec.ports
        if lease_name(service, p) in state.ports
    }
    known = state.services.get(service)
    if not ports and spec.ports and known is not None and known.port:
        ports[spec.ports[0]] = known.port
    return ports


async def run(nc: Client, stop: asyncio.Event, config: HealthConfig | None = None) -> None:
    """`fleet up` runs this: the health service of this node until `stop` is set."""
    await HealthService(nc, config).run(stop)

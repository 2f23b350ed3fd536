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
`service.health`, retried until the agent acknowledges it (agent_commands.py). A failure that
persists climbs the recovery ladder (ladder.py).

With a `node` configured, only agents whose actor runs on that node are watched (the actor
says where it runs in its `show` reply), so probes run next to the services they check.

With the fleet key (`HealthConfig.mac_key`, which `fleet up` passes) every event it follows or
loads is verified first (Fleet-Mac and chain, infra/eventfollow.py); one that does not verify is
refused, logged with the agent, sequence and why, and never folded or acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra import errorlog, pressure, probes
from infra.eventscan import Stored
from infra.eventstore import EventStore
from schemas import events as e
from schemas import replies, subjects
from schemas.agent import AgentState, evolve
from schemas.errors import UnknownAgent
from schemas.health import HealthRequest, Observation
from schemas.states import Lifecycle
from services.health.agent_commands import Reporter, command
from services.health.ladder import RecoveryLadder
from services.health.model import (
    HealthConfig,
    Watched,
    now,
    report,
    service_cwd,
    service_ports,
    template_of,
)
from services.health.sampling import Sampler

__all__ = ["HealthService", "run"]

log = logging.getLogger(__name__)

L = Lifecycle
KINDS = ("liveness", "readiness")
SAMPLE_SHARE = 10  # a sampling round waits at least ten times the CPU it took
_encode = msgspec.json.Encoder().encode


class HealthService:
    def __init__(self, nc: Client, config: HealthConfig | None = None) -> None:
        self.nc = nc
        self.config = config or HealthConfig()
        self.store = EventStore(nc, mac_key=self.config.mac_key)  # refuses what does not verify
        self.agents: dict[str, Watched] = {}
        self.sampler = Sampler()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready: dict[tuple[str, str], asyncio.Event] = {}  # (agent, service) was ready once
        self._grace: dict[tuple[str, str], asyncio.Future[None]] = {}  # its startup grace
        self._sample_cost = 0.0  # CPU seconds the last sampling round took
        backoff = self.config.report_backoff_s
        self.reporter = Reporter(nc, timeout_s=self.config.report_timeout_s, backoff_s=backoff)
        self.ladder = RecoveryLadder(nc, self.config, self.observe, self._background)

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then stop every probe and loop."""
        sub = await self.nc.subscribe(subjects.control("health"), cb=self._on_request)
        loops = [
            asyncio.create_task(self.store.follow(self.config.durable, self.handle, stop=stop)),
            asyncio.create_task(self._every(self.config.tick_s, self.tick, stop)),
            asyncio.create_task(self._every(self._sample_period, self.sample, stop)),
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
            graces = list(self._grace.values())
            for grace in graces:
                grace.cancel()
            for task in [*loops, *self._tasks, *self._probe_tasks()]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, *graces, return_exceptions=True)
            await self.reporter.close()

    def _probe_tasks(self) -> list[asyncio.Task[Any]]:
        return [t for w in self.agents.values() for t in w.probes.values()]

    async def _every(
        self, period: float | Callable[[], float], step: Any, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                await step()
            except Exception:
                log.exception("health: %s failed; carrying on", getattr(step, "__name__", step))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period() if callable(period) else period)

    def _sample_period(self) -> float:
        """The configured period, stretched so that sampling takes at most a tenth of one
        core however many agents there are: a round that took 0.3 s waits 3 s."""
        return max(self.config.sample_period_s, SAMPLE_SHARE * self._sample_cost)

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
            self.ladder.note_attempt(w, ev)
        if stored.seq <= w.seq:
            return  # already in the state loaded at first sight
        w.state, w.seq = evolve(w.state, ev), stored.seq
        await self._react(w, ev)

    async def _first_sight(self, agent_id: str) -> Watched | None:
        loaded = await self.store.load(agent_id)
        if loaded.state.removed:
            return None
        w = Watched(loaded.state, loaded.position.seq, deque(maxlen=self.config.history))
        w.template = template_of(w.state)
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
                w.template = template_of(w.state)
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

    # -- probes -----------------------------------------------------------------------------

    async def _locate_then_probe(self, w: Watched) -> None:
        if self.config.node and w.node is None:
            reply = await command(self.nc, w.agent_id, "show", timeout=5.0)
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
        cwd = service_cwd(w.state.worktree, spec.cwd)
        for kind in KINDS:
            probe = getattr(spec, kind)
            if probe is None or probe.log is not None:
                continue  # log lines are the agent's to read (startup/readiness waits)

            async def changed(ok: bool, result: probes.ProbeResult, kind: str = kind) -> None:
                await self.verdict(w, service, kind, ok, result.detail, result.ms)

            run = probes.run(
                probe,
                ports=ports,
                cwd=cwd,
                on_change=changed,
                excuse=self._starving(w, service),
                patient=pressure.under_pressure,
            )
            if kind == "liveness" and spec.readiness is not None and spec.readiness.log is None:
                run = self._once_ready(w, service, run)
            w.probes[(service, kind)] = asyncio.ensure_future(run)

    def _starving(self, w: Watched, service: str) -> Callable[[], bool]:
        """Whether the service's timed-out check is the machine's overload, not the service's
        hang (infra/pressure.py): then it is not counted, and the ladder does not restart a
        service for waiting its turn, which is how an overload became a spiral."""

        def starved() -> bool:
            svc = w.state.services.get(service)
            return svc is not None and pressure.starved(svc.pid)

        return starved

    async def _once_ready(
        self, w: Watched, service: str, run: Coroutine[Any, Any, probes.ProbeResult]
    ) -> probes.ProbeResult:
        """Liveness counts once the service has been ready (what Kubernetes' startup probe is
        for): a service still starting on a loaded machine is not failed, and restarted by the
        recovery ladder, for answering slowly before it ever answered at all."""
        try:
            await self._ready_once(w.agent_id, service).wait()
        except BaseException:
            run.close()
            raise
        return await run

    def _ready_once(self, agent_id: str, service: str) -> asyncio.Event:
        return self._ready.setdefault((agent_id, service), asyncio.Event())

    def _stop_probes(self, w: Watched, service: str | None = None) -> None:
        for key in [k for k in self._ready if k[0] == w.agent_id]:
            if service is None or key[1] == service:
                del self._ready[key]  # a new run of the service starts again
        for key in [k for k in self._grace if k[0] == w.agent_id]:
            if service is None or key[1] == service:
                self._grace.pop(key).cancel()
        for key in [k for k in w.probes if service is None or k[0] == service]:
            w.probes.pop(key).cancel()
        for key in [k for k in w.verdicts if service is None or k[0] == service]:
            del w.verdicts[key]
        self.reporter.forget(w.agent_id, service)  # verdicts of a run that is over

    async def _when_late(self, w: Watched, service: str, detail: str) -> None:
        """The service's startup grace is over and it was never ready: that is its verdict."""
        await asyncio.sleep(self.config.startup_grace_s)
        self._grace.pop((w.agent_id, service), None)
        if not self._ready_once(w.agent_id, service).is_set():
            late = f"never ready in {self.config.startup_grace_s:g} s: {detail}"
            await self.verdict(w, service, "readiness", False, late, late=True)

    async def verdict(
        self,
        w: Watched,
        service: str,
        kind: str,
        ok: bool,
        detail: str,
        ms: float = 0.0,
        late: bool = False,
    ) -> None:
        """A check changed its verdict: publish it, and tell the agent if the service's did
        (delivered in the background until acknowledged: a probe never waits on the agent)."""
        ready = self._ready_once(w.agent_id, service)
        if kind == "readiness" and not ok and not ready.is_set() and not late:
            # Still starting: observed, not a verdict, until its grace is over.
            obs = Observation(
                agent=w.agent_id, at=now(), kind="probe", service=service, probe=kind, ok=ok,
                detail=f"not ready yet: {detail}", ms=round(ms, 3),
            )  # fmt: skip
            await self.observe(w, obs)
            key = (w.agent_id, service)
            if key not in self._grace:
                self._grace[key] = asyncio.ensure_future(self._when_late(w, service, detail))
            return
        before = w.verdict(service)
        w.verdicts[(service, kind)] = ok
        if kind == "readiness" and ok:
            ready.set()
        w.details[service] = f"{kind}: {detail}"
        obs = Observation(
            agent=w.agent_id, at=now(), kind="probe", service=service, probe=kind, ok=ok,
            detail=detail, ms=round(ms, 3),
        )  # fmt: skip
        await self.observe(w, obs)
        after = w.verdict(service)
        if after is not None and after != before:
            self.reporter.report(w.agent_id, service, after, kind, detail)

    async def observe(self, w: Watched, obs: Observation) -> None:
        w.history.append(obs)
        await self.nc.publish(subjects.health(w.agent_id), _encode(obs))

    # -- sampling ---------------------------------------------------------------------------

    def _measure(self, states: list[AgentState]) -> dict[str, Any]:
        """A sampling round in its thread; the CPU it took is kept for `_sample_period`."""
        started = time.thread_time()
        try:
            return self.sampler.measure_all(states)
        finally:
            self._sample_cost = time.thread_time() - started

    async def sample(self) -> None:
        """psutil figures of each watched agent's tree, and a process check of its services:
        one round for all of them (services/health/sampling.py), in a thread."""
        watched = [
            w
            for w in self.agents.values()
            if self.mine(w) and w.state.lifecycle in (L.RUNNING, L.PAUSED) and w.state.tmux_session
        ]
        measured = await asyncio.to_thread(self._measure, [w.state for w in watched])
        for w in watched:
            if w.agent_id not in measured or self.agents.get(w.agent_id) is not w:
                continue  # no live pane, or forgotten while the round ran
            sample, alive = measured[w.agent_id]
            await self.observe(
                w, Observation(agent=w.agent_id, at=now(), kind="sample", sample=sample)
            )
            for name, ok in alive.items():
                if w.verdicts.get((name, "process")) is not ok:
                    detail = "process running" if ok else "process gone"
                    await self.verdict(w, name, "process", ok, detail)

    async def tick(self) -> None:
        await self.ladder.tick([w for w in list(self.agents.values()) if self.mine(w)])

    # -- answering --------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        try:
            req: HealthRequest = replies.decode_request(msg.data, HealthRequest, "health request")
            w = self.agents.get(subjects.token(req.agent))
            if w is None or not self.mine(w):
                if self.config.node:
                    return  # the health service of the agent's node answers
                raise UnknownAgent(req.agent)
            unreported = self.reporter.pending(w.agent_id)
            reply = replies.ok(**report(w, req, self.config.node, unreported))
        except Exception as exc:  # noqa: BLE001 (the one error boundary: infra/errorlog.py)
            reply = errorlog.reply_to(exc, log, "health: a request")
        if msg.reply:
            await msg.respond(reply)


async def run(nc: Client, stop: asyncio.Event, config: HealthConfig | None = None) -> None:
    """`fleet up` runs this: the health service of this node until `stop` is set."""
    await HealthService(nc, config).run(stop)

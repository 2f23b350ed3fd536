"""Prometheus metrics (`fleet_*`), served by the gateway at `/metrics`.

Most families are derived from the event log: the gateway reads the whole log once at start
and then follows it, so counters are "events of this kind in the log" and gauges are the fold
of it. Command latency is what the gateway itself measures for REST commands (actors run in
other processes and publish no timings); mail depth and dead letters come from stream info;
CPU and memory from `fleet.health.<agent>` observations, when the health service sends them.
"""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from schemas import events as e
from schemas import subjects
from schemas.eventcheck import Refusal
from schemas.states import Activity, Lifecycle

__all__ = ["CONTENT_TYPE_LATEST", "FleetMetrics"]

SPAWN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(slots=True)
class _Agent:
    lifecycle: str = Lifecycle.NEW.value
    activity: str = Activity.READY.value
    created_at: datetime | None = None
    spawning_since: datetime | None = None


@dataclass
class FleetMetrics:
    """Every `fleet_*` family in a registry of its own (one per gateway, so tests can run many)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    agents_state: dict[str, _Agent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.registry
        self.agents = Gauge(
            "fleet_agents",
            "Agents by lifecycle (fold of the event log).",
            ["lifecycle"],
            registry=r,
        )
        self.agents_activity = Gauge(
            "fleet_agents_activity",
            "Agents by activity (fold of the event log).",
            ["activity"],
            registry=r,
        )
        self.agent_state = Gauge(
            "fleet_agent_state",
            "1 for each agent's current lifecycle and activity.",
            ["agent", "lifecycle", "activity"],
            registry=r,
        )
        self.events = Counter(
            "fleet_events",
            "Events in the log, by type (read since the "
            "gateway started, from the start of the log).",
            ["type"],
            registry=r,
        )
        self.commands = Histogram(
            "fleet_command_duration_seconds",
            "Commands sent through the gateway's REST API: seconds until the reply, by type and "
            "outcome (ok, or the error code).",
            ["type", "outcome"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.spawn = Histogram(
            "fleet_spawn_duration_seconds",
            "From agent.created (or a restart's SPAWNING) to RUNNING, by the events' timestamps.",
            buckets=SPAWN_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "fleet_service_restarts", "service.restarted events.", ["agent", "service"], registry=r
        )
        self.probe_failures = Counter(
            "fleet_health_probe_failures",
            "service.health events with healthy=false.",
            ["agent", "service"],
            registry=r,
        )
        self.rungs = Counter(
            "fleet_recovery_rungs", "recovery.escalated events, by rung.", ["rung"], registry=r
        )
        self.mail_depth = Gauge(
            "fleet_mail_depth",
            "Messages waiting in FLEET_MAIL, by priority.",
            ["priority"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "fleet_mail_dead_letters",
            "Messages in FLEET_MAIL_DLQ (mail never acknowledged).",
            registry=r,
        )
        self.cpu = Gauge(
            "fleet_agent_cpu_percent",
            "An agent's process tree CPU, from health observations.",
            ["agent"],
            registry=r,
        )
        self.memory = Gauge(
            "fleet_agent_memory_bytes",
            "An agent's process tree RSS, from health observations.",
            ["agent"],
            registry=r,
        )
        self.notified = Counter(
            "fleet_notifications_delivered",
            "Notifications delivered, by channel.",
            ["channel"],
            registry=r,
        )
        self.notify_failed = Counter(
            "fleet_notifications_failed",
            "Notifications not delivered, by channel and reason (error after the retries, "
            "rate_limited).",
            ["channel", "reason"],
            registry=r,
        )
        self.nats_connected = Gauge(
            "fleet_nats_connected", "1 while the gateway's NATS connection is up.", registry=r
        )
        self.ws_clients = Gauge("fleet_ws_clients", "Open event WebSockets.", registry=r)
        self.events_refused = Counter(
            "fleet_events_refused",
            "Events of the log that did not verify (MAC or chain) and were not acted on, by "
            "agent: a forged or damaged event, or a writer that is not the agent's actor.",
            ["agent"],
            registry=r,
        )
        for lifecycle in Lifecycle:
            if lifecycle is not Lifecycle.NEW:
                self.agents.labels(lifecycle.value).set(0)
        for activity in Activity:
            self.agents_activity.labels(activity.value).set(0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- from the log ---------------------------------------------------------------------

    async def refused(self, refusal: Refusal) -> None:
        """An `on_refused` for a log reader (infra/eventfollow.py `LiveCheck`)."""
        self.events_refused.labels(refusal.agent_id).inc()

    def observe(self, event: e.AgentEvent) -> None:
        self.events.labels(type(event).__struct_config__.tag).inc()
        agent = self.agents_state.get(event.agent_id)
        if agent is None:
            agent = self.agents_state[event.agent_id] = _Agent()
        before = (agent.lifecycle, agent.activity)
        match event:
            case e.AgentCreated(at=at):
                agent.created_at = agent.spawning_since = at
            case e.LifecycleChanged(to=to, at=at):
                if to is Lifecycle.SPAWNING:
                    agent.spawning_since = at
                elif to is Lifecycle.RUNNING and agent.spawning_since is not None:
                    self.spawn.observe(max(0.0, (at - agent.spawning_since).total_seconds()))
                    agent.spawning_since = None
                agent.lifecycle = to.value
            case e.ActivityChanged(to=to):
                agent.activity = to.value
            case e.ServiceRestarted(service=s):
                self.restarts.labels(event.agent_id, s).inc()
            case e.ServiceHealth(healthy=False, service=s):
                self.probe_failures.labels(event.agent_id, s).inc()
            case e.RecoveryEscalated(rung=rung):
                self.rungs.labels(rung).inc()
            case e.AgentRemoved():
                self._forget(event.agent_id, before)
                return
        if (agent.lifecycle, agent.activity) != before:
            self._moved(event.agent_id, before, (agent.lifecycle, agent.activity))

    def _moved(self, agent_id: str, before: tuple[str, str], after: tuple[str, str]) -> None:
        if before[0] != Lifecycle.NEW.value:
            self.agents.labels(before[0]).dec()
            self.agents_activity.labels(before[1]).dec()
            self.agent_state.remove(agent_id, *before)
        self.agents.labels(after[0]).inc()
        self.agents_activity.labels(after[1]).inc()
        self.agent_state.labels(agent_id, *after).set(1)

    def _forget(self, agent_id: str, before: tuple[str, str]) -> None:
        if before[0] != Lifecycle.NEW.value:
            self.agents.labels(before[0]).dec()
            self.agents_activity.labels(before[1]).dec()
            self.agent_state.remove(agent_id, *before)
        self.agents_state.pop(agent_id, None)
        for gauge in (self.cpu, self.memory):
            with contextlib.suppress(KeyError):  # no observation was ever received for it
                gauge.remove(agent_id)

    # -- from elsewhere -------------------------------------------------------------------

    def health_observation(self, agent_id: str, data: Any) -> None:
        """A `fleet.health.<agent>` message; a `sample`'s resource figures are read if present."""
        if not isinstance(data, dict):
            return
        nested = data.get("sample") or data.get("resources")
        found: dict[str, Any] = nested if isinstance(nested, dict) else data
        cpu = found.get("cpu_percent")
        if isinstance(cpu, int | float):
            self.cpu.labels(agent_id).set(cpu)
        for key, scale in (("rss_bytes", 1), ("rss_mb", 1024 * 1024), ("memory_mb", 1024 * 1024)):
            value = found.get(key)
            if isinstance(value, int | float):
                self.memory.labels(agent_id).set(value * scale)
                break

    def mail(self, depth_by_subject: dict[str, int], dead: int) -> None:
        depth: Tally[str] = Tally({p: 0 for p in subjects.PRIORITIES})
        for subject, count in depth_by_subject.items():
            depth[subject.rpartition(".")[2]] += count
        for priority in subjects.PRIORITIES:
            self.mail_depth.labels(priority).set(depth[priority])
        self.dead_letters.set(dead)

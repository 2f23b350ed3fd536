"""What the health service knows of each agent (`Watched`) and how it is configured.

Shared by the service (service.py), its recovery ladder (ladder.py) and its commands to agents
(agent_commands.py); none of it does I/O. Also the report `fleet.ctl.health` answers with.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from schemas import recovery as ladder
from schemas.agent import AgentState
from schemas.health import HealthRequest, Observation
from schemas.ports import lease_name
from schemas.templates import ServiceSpec, Template, decode_spec

log = logging.getLogger(__name__)

BY = "service:health"  # the `by` of every command the health service sends


@dataclass(frozen=True)
class HealthConfig:
    node: str = ""  # watch only agents whose actor runs on this (Ray) node; "" for all
    sample_period_s: float = 2.0
    tick_s: float = 0.25  # how often persisting failures are weighed against the ladder
    history: int = 500  # observations kept per agent
    exit_grace_s: float = 1.0  # beyond the service's own restart backoff, before it counts
    # A service not ready yet is starting, not unhealthy, for this long after its probes begin
    # (a start on a loaded machine takes seconds); past it, never having been ready counts.
    startup_grace_s: float = 120.0
    stable_s: float = ladder.STABLE_S
    command_timeout_s: float = 120.0  # a respawn stops and brings up the whole agent
    report_timeout_s: float = 5.0  # one attempt of a report_health; unanswered, it is retried
    report_backoff_s: tuple[float, float] = (0.2, 5.0)  # first and longest wait between tries
    # The fleet key (infra/fleetkey.py): events that do not verify are refused. None: unchecked.
    mac_key: bytes | None = field(default=None, repr=False)

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


def template_of(state: AgentState) -> Template | None:
    """The resolved template recorded in the agent's log; None (logged) if unreadable."""
    try:
        return decode_spec(state.template_spec)
    except msgspec.DecodeError as err:
        log.warning("agent %s: its recorded template is unreadable: %s", state.agent_id, err)
        return None


def service_cwd(worktree: str, cwd: str) -> str:
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


def report(w: Watched, req: HealthRequest, node: str, unreported: list[str]) -> dict[str, Any]:
    """What `fleet.ctl.health` answers about one agent: its services' verdicts, its recovery
    attempts, the verdicts not yet acknowledged and the last `req.limit` observations."""
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
        "node": w.node or node,
        "lifecycle": w.state.lifecycle.value,
        "services": services,
        "recovery": [msgspec.to_builtins(a) for a in w.attempts],
        "unreported": unreported,  # verdicts not yet acknowledged
        "history": [msgspec.to_builtins(o) for o in rows[-max(1, req.limit) :]],
    }

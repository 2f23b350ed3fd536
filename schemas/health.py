"""What the health service publishes on `fleet.health.<agent>` and answers on `fleet.ctl.health`.

Observations are JSON any client can read. `kind` says which fields matter:
- `sample`: psutil figures of the agent's whole process tree (`sample`);
- `probe`: a liveness/readiness probe or a process check of one service changed its verdict
  (`service`, `probe`, `ok`, `detail`, `ms`);
- `recovery`: a rung of the recovery ladder was climbed (`rung`, `attempt`, `detail`).
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    cpu_percent: float = 0.0  # of one core, summed over the tree (200 = two cores busy)
    rss_mb: float = 0.0
    threads: int = 0
    open_files: int = 0  # file descriptors
    processes: int = 0


class Observation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    agent: str
    at: datetime
    kind: str  # sample | probe | recovery
    service: str = ""
    probe: str = ""  # liveness | readiness | process
    ok: bool | None = None
    detail: str = ""
    ms: float = 0.0
    sample: Sample | None = None
    rung: str = ""
    attempt: int = 0


class HealthRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`fleet.ctl.health`: the latest `limit` observations of one agent, oldest first."""

    agent: str
    limit: int = 100
    kind: str = ""  # only observations of this kind ("" for all)
    by: str = ""
    id: str = ""


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """`fleet.notify.<severity>`: something a person should know (the ladder's last rung)."""

    agent: str
    reason: str
    at: datetime
    severity: str = "critical"
    source: str = "health"
    service: str = ""

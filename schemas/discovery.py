"""Discovery: what each agent publishes to KV `fleet_registry`, and the find/acquire requests.

An agent's actor puts its entry (key = agent id) every heartbeat and whenever its state
changes. A dead agent stops beating: the bucket's TTL drops its key, and readers also skip an
entry whose `heartbeat_at` is older than `max_age_s`, so a stale key is never an answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import msgspec

from schemas.agent import AgentState
from schemas.subjects import command

HEARTBEAT_S = 2.0
MAX_AGE_S = 3 * HEARTBEAT_S  # an entry older than this is a dead agent's
BUCKET_TTL_S = 10 * HEARTBEAT_S  # the KV bucket forgets keys nobody refreshed


class RegistryEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    template: str
    capabilities: tuple[str, ...] = ()
    lifecycle: str
    activity: str
    endpoint: str  # the subject its commands go to: fleet.cmd.<id>
    node: str = ""
    heartbeat_at: datetime


class FindRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`fleet.ctl.find`: READY, RUNNING agents that have every capability asked for."""

    capabilities: tuple[str, ...] = ()
    template: str = ""  # "" for any
    limit: int = 0  # 0 for all
    by: str = ""
    id: str = ""


class AcquireRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`fleet.ctl.acquire`: `count` agents with the capabilities; spawn the missing ones from
    `template` in `repo` (then they carry the asked capabilities)."""

    capabilities: tuple[str, ...] = ()
    count: int = 1
    template: str = "shell"
    repo: str = ""  # needed only when agents must be spawned
    by: str = ""
    id: str = ""


def alive(entry: RegistryEntry, now: datetime, max_age_s: float = MAX_AGE_S) -> bool:
    return now - entry.heartbeat_at <= timedelta(seconds=max_age_s)


def has(entry: RegistryEntry, capabilities: Iterable[str]) -> bool:
    return set(capabilities) <= set(entry.capabilities)


def select(
    entries: Iterable[RegistryEntry],
    request: FindRequest,
    now: datetime,
    max_age_s: float = MAX_AGE_S,
) -> list[RegistryEntry]:
    """The entries a find answers with: alive, RUNNING and READY, with every capability."""
    found = [
        e
        for e in entries
        if alive(e, now, max_age_s)
        and e.lifecycle == "RUNNING"
        and e.activity == "READY"
        and has(e, request.capabilities)
        and (not request.template or e.template == request.template)
    ]
    found.sort(key=lambda e: e.id)
    return found[: request.limit] if request.limit > 0 else found


def entry(state: AgentState, node: str, now: datetime) -> RegistryEntry:
    """What an agent publishes about itself."""
    return RegistryEntry(
        id=state.agent_id,
        name=state.name,
        template=state.template,
        capabilities=state.capabilities,
        lifecycle=state.lifecycle.value,
        activity=state.activity.value,
        endpoint=command(state.agent_id),
        node=node,
        heartbeat_at=now,
    )

"""The audit's I/O: read one agent's log (or every agent's) from JetStream and run schemas.audit.

No actor is needed, and any NATS with a `FLEET_EVENTS` stream will do, so an audit also runs on
a copy of the stream (a backup restored elsewhere). The fleet key comes from the state dir when
it is there; without it the MACs are not checked, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nats.js.errors import NotFoundError

from infra import fleetkey
from infra.eventstore import EventStore
from schemas import subjects
from schemas.audit import AgentAudit

COUNT_RETRIES = 5


@dataclass(frozen=True)
class AuditOptions:
    at_seq: int | None = None
    at_time: datetime | None = None
    keep: bool = True  # keep the events for a timeline or an export
    key: bytes | None = None


def fleet_key(state_dir: str | Path) -> bytes | None:
    return fleetkey.load_if_present(state_dir)


async def subject_counts(store: EventStore, filter_subject: str) -> dict[str, int]:
    """Messages per agent subject as the stream counts them."""
    try:
        info = await store.js.stream_info(subjects.EVENTS_STREAM, subjects_filter=filter_subject)
    except NotFoundError:
        return {}
    return dict(info.state.subjects or {})


async def audit_agent(store: EventStore, agent_id: str, options: AuditOptions) -> AgentAudit:
    """Read the agent's whole log through `scan_signed` and audit it.

    The stream's count for the subject is taken between two reads of its last sequence that
    agree, and the scan stops at that sequence, so an agent appending meanwhile is no gap.
    """
    subject = subjects.events(agent_id)
    for _ in range(COUNT_RETRIES):
        last = await store.last_seq(agent_id)
        count = (await subject_counts(store, subject)).get(subject, 0)
        if await store.last_seq(agent_id) == last:
            break
    audit = AgentAudit(
        agent_id, options.key, at_seq=options.at_seq, at_time=options.at_time, keep=options.keep
    )
    if last:
        await store.scan_signed(agent_id, audit.feed, upto=last)
    audit.finish(count, last)
    return audit


async def audit_all(store: EventStore, options: AuditOptions) -> list[AgentAudit]:
    return [await audit_agent(store, agent_id, options) for agent_id in await store.agents()]

"""The events of an agent's log: a tagged union of frozen msgspec Structs.

Rules (CONTRIBUTING.md, "Evolving the log"): tags are explicit dotted strings and never change;
a field added later gets a default; a breaking change is a new tag and a new class, and the old
class stays in the union. Golden files in tests/golden/ hold one encoded event per tag ever
shipped.
"""

from __future__ import annotations

import typing
from datetime import datetime

import msgspec

from schemas.states import Activity, Lifecycle


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    agent_id: str
    event_id: str  # also sent as Nats-Msg-Id, so a retried append is stored once
    at: datetime
    actor: str = ""  # who caused it: "user:<name>", "service:<name>", "agent"
    causation: str = ""  # id of the command that led to it
    prev_hash: str = ""  # hash of the previous event of this agent ("" for the first)


class AgentCreated(Event, frozen=True, tag="agent.created"):
    name: str
    template: str
    repo: str
    base_ref: str = "HEAD"
    branch: str = ""
    template_version: int = 0
    capabilities: tuple[str, ...] = ()
    options: dict[str, str] = {}
    command: str = ""  # the assistant command line, as the template resolved it
    template_spec: str = ""  # the resolved template as JSON (schemas.templates.Template)


class LifecycleChanged(Event, frozen=True, tag="lifecycle.changed"):
    to: Lifecycle
    frm: Lifecycle = msgspec.field(default=Lifecycle.NEW, name="from")
    reason: str = ""


class ActivityChanged(Event, frozen=True, tag="activity.changed"):
    to: Activity
    frm: Activity = msgspec.field(default=Activity.READY, name="from")
    detail: str = ""  # what the agent is asking, when it waits
    # Who said so: "screen" (read from the pane) or "hook" (the assistant's own hooks,
    # schemas/hooks.py). Older logs have no field: they were all read from the screen.
    source: typing.Literal["screen", "hook"] = "screen"


class WorkspaceReady(Event, frozen=True, tag="workspace.ready"):
    path: str
    branch: str
    base_ref: str = ""
    head: str = ""  # commit the worktree started from


class WorkspaceRemoved(Event, frozen=True, tag="workspace.removed"):
    path: str
    saved_ref: str = ""  # where uncommitted work was saved first, if any
    forced: bool = False


class SessionStarted(Event, frozen=True, tag="session.started"):
    socket: str
    session: str
    windows: tuple[str, ...] = ()
    recording: str = ""  # asciicast file of the agent window


class SessionClosed(Event, frozen=True, tag="session.closed"):
    socket: str
    session: str
    reason: str = ""


class PortsLeased(Event, frozen=True, tag="ports.leased"):
    ports: dict[str, int]


class PortsReleased(Event, frozen=True, tag="ports.released"):
    ports: dict[str, int]


class ServiceStarted(Event, frozen=True, tag="service.started"):
    service: str
    pid: int
    port: int | None = None


class ServiceExited(Event, frozen=True, tag="service.exited"):
    service: str
    pid: int
    code: int | None = None
    signal: int | None = None


class ServiceHealth(Event, frozen=True, tag="service.health"):
    service: str
    healthy: bool
    probe: str = ""
    detail: str = ""


class ServiceRestarted(Event, frozen=True, tag="service.restarted"):
    service: str
    attempt: int
    delay_s: float = 0.0


class RecoveryEscalated(Event, frozen=True, tag="recovery.escalated"):
    rung: str  # restart_service | recreate_session | new_ports | respawn | ask_human | rollback
    attempt: int = 1
    reason: str = ""


class ResourcesExceeded(Event, frozen=True, tag="resources.exceeded"):
    """An agent's process tree went over a limit of its template's `resources`."""

    resource: str  # memory_mb | cpu | pids | lifetime_s
    limit: float
    value: float
    action: str = ""  # what followed, per the template's on_exceed: warn | restart | stop
    enforced_by: str = ""  # cgroup-v2 | cgroup-v1 | rlimit | watchdog


class CheckpointTaken(Event, frozen=True, tag="checkpoint.taken"):
    checkpoint: int
    log_seq: int  # stream sequence of the last event before the checkpoint
    commit: str
    ref: str
    label: str = ""
    auto: str = ""  # "" for a person's checkpoint, else why: rollback, stop, interval, unhealthy
    scrollback: str = ""  # path of the saved scrollback


class RolledBack(Event, frozen=True, tag="rolled_back"):
    checkpoint: int
    to_seq: int
    commit: str
    saved_checkpoint: int | None = None  # the automatic checkpoint of the work rolled away


class InputSent(Event, frozen=True, tag="input.sent"):
    text: str = ""
    keys: tuple[str, ...] = ()


class UserAttached(Event, frozen=True, tag="user.attached"):
    user: str
    session: str = ""
    readonly: bool = False


class UserDetached(Event, frozen=True, tag="user.detached"):
    user: str
    session: str = ""


class AgentRemoved(Event, frozen=True, tag="agent.removed"):
    reason: str = ""


class AgentTaskStarted(Event, frozen=True, tag="task.started"):
    """The agent began a task (its own log is `fleet.task.<task_id>`), so its timeline shows it."""

    task_id: str
    attempt: int = 1


class AgentTaskEnded(Event, frozen=True, tag="task.ended"):
    task_id: str
    status: str = ""  # the task's status at its end: DONE, FAILED, TIMED_OUT or CANCELLED
    reason: str = ""


AgentEvent = (
    AgentCreated
    | LifecycleChanged
    | ActivityChanged
    | WorkspaceReady
    | WorkspaceRemoved
    | SessionStarted
    | SessionClosed
    | PortsLeased
    | PortsReleased
    | ServiceStarted
    | ServiceExited
    | ServiceHealth
    | ServiceRestarted
    | RecoveryEscalated
    | ResourcesExceeded
    | CheckpointTaken
    | RolledBack
    | InputSent
    | UserAttached
    | UserDetached
    | AgentRemoved
    | AgentTaskStarted
    | AgentTaskEnded
)

EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(AgentEvent)
TAGS: dict[str, type[Event]] = {t.__struct_config__.tag: t for t in EVENT_TYPES}  # type: ignore[misc]

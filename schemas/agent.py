"""One agent as a decider: its state, `decide` (command -> new facts) and `evolve` (fact -> state).

`decide` refuses with a domain error and never touches the world; `evolve` applies facts that
are already recorded and never raises, because a log that cannot be replayed is lost work.
No clock and no id generator inside: the caller passes `now` and `new_id`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal, TypedDict, assert_never

import msgspec
from msgspec.structs import replace

from schemas import commands as c
from schemas import events as e
from schemas.errors import (
    AgentExists,
    InvalidTransition,
    UnknownAgent,
    UnknownCheckpoint,
    UnknownService,
)
from schemas.states import ACTIVE, ACTIVITY, LIFECYCLE, Activity, Lifecycle, sources_of
from schemas.subjects import token


class ServiceState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str = "starting"  # starting | running | exited | restarting (waiting out a backoff)
    pid: int | None = None
    port: int | None = None
    healthy: bool | None = None
    restarts: int = 0
    exit_code: int | None = None
    exit_signal: int | None = None
    health_detail: str = ""  # what the last health event said (a probe's answer, a give-up)


class CheckpointRef(msgspec.Struct, frozen=True, kw_only=True):
    checkpoint: int
    log_seq: int
    commit: str
    ref: str
    label: str = ""
    auto: str = ""
    at: datetime | None = None
    healthy: bool | None = None  # no service unhealthy and not in ERROR when taken (None: unknown)


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str = ""
    name: str = ""
    template: str = ""
    template_version: int = 0
    template_spec: str = ""  # the resolved template as JSON (schemas.templates.decode_spec)
    repo: str = ""
    base_ref: str = ""
    branch: str = ""
    command: str = ""
    capabilities: tuple[str, ...] = ()
    options: dict[str, str] = {}
    lifecycle: Lifecycle = Lifecycle.NEW
    activity: Activity = Activity.READY
    activity_detail: str = ""
    reason: str = ""
    worktree: str = ""
    head: str = ""
    tmux_socket: str = ""
    tmux_session: str = ""
    recording: str = ""
    ports: dict[str, int] = {}
    services: dict[str, ServiceState] = {}
    checkpoints: tuple[CheckpointRef, ...] = ()
    users: tuple[str, ...] = ()
    removed: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    events: int = 0


INITIAL = AgentState()

L = Lifecycle


class _Meta(TypedDict):
    """The fields every event of one decision shares."""

    agent_id: str
    at: datetime
    actor: str
    causation: str


def decide(
    state: AgentState, cmd: c.AgentCommand, *, now: datetime, new_id: Callable[[], str]
) -> list[e.AgentEvent]:
    """Check `cmd` against `state`; raise a `FleetError` or return the events that record it."""
    meta = _Meta(agent_id=state.agent_id, at=now, actor=cmd.by or "user", causation=cmd.id)

    def to(target: Lifecycle, verb: str, reason: str = "") -> list[e.AgentEvent]:
        if target not in LIFECYCLE[state.lifecycle]:
            # NEW is no state a person can bring an agent to; it never belongs in a sentence.
            needs = _either(x for x in sources_of(target) if x is not L.NEW)
            raise InvalidTransition(state.agent_id, verb, state.lifecycle.value, needs)
        return [
            e.LifecycleChanged(
                event_id=new_id(), to=target, frm=state.lifecycle, reason=reason, **meta
            )
        ]

    def needs(verb: str, allowed: frozenset[Lifecycle]) -> None:
        if state.lifecycle not in allowed:
            wanted = _either(x for x in Lifecycle if x in allowed)
            raise InvalidTransition(state.agent_id, verb, state.lifecycle.value, wanted)

    if isinstance(cmd, c.Create):
        return _create(state, cmd, meta, new_id)
    if state.lifecycle is L.NEW or state.removed:
        raise UnknownAgent(state.agent_id)
    live = frozenset({L.RUNNING, L.PAUSED})
    match cmd:
        case c.Show() | c.Output() | c.ProbeSandbox():
            return []
        case c.Pause():
            return to(L.PAUSED, "pause")
        case c.Resume():
            needs("resume", frozenset({L.PAUSED}))
            return to(L.RUNNING, "resume")
        case c.Stop() | c.Kill():
            verb = "stop" if isinstance(cmd, c.Stop) else "kill"
            if state.lifecycle in (L.STOPPING, L.STOPPED):
                return []  # already stopping or stopped: stopping again changes nothing
            return to(L.STOPPING, verb, verb)
        case c.Restart():
            if state.lifecycle in (L.RUNNING, L.PAUSED):
                return to(L.STOPPING, "restart", "restart")
            return to(L.SPAWNING, "restart", "restart")
        case c.Send(text=text, keys=keys):
            needs("send input to", frozenset({L.RUNNING}))
            return [e.InputSent(event_id=new_id(), text=text, keys=keys, **meta)]
        case c.Attach(user=user, readonly=ro):
            needs("attach to", live)
            return [
                e.UserAttached(event_id=new_id(), user=token(user, "user"), readonly=ro, **meta)
            ]
        case c.Detach(user=user):
            if user not in state.users:
                return []
            return [e.UserDetached(event_id=new_id(), user=user, **meta)]
        case c.Remove():
            needs("remove", frozenset({L.STOPPED, L.ERROR}))
            return [e.AgentRemoved(event_id=new_id(), reason="removed", **meta)]
        case c.Checkpoint():
            needs("checkpoint", frozenset({L.RUNNING, L.PAUSED, L.STOPPED, L.ERROR}))
            return []  # the actor records checkpoint.taken once the commit exists
        case c.Rollback(checkpoint=n):
            needs("roll back", frozenset({L.RUNNING, L.PAUSED, L.STOPPED, L.ERROR}))
            if all(cp.checkpoint != n for cp in state.checkpoints):
                raise UnknownCheckpoint(state.agent_id, n)
            return []  # the actor records rolled_back once the worktree is reset
        case c.RestartService(service=name):
            needs("restart a service of", frozenset({L.RUNNING}))
            if name not in state.services:
                raise UnknownService(state.agent_id, name)
            return []  # the actor records service.exited / service.restarted / service.started
        case c.RecreateSession() | c.NewPorts():
            verb = (
                "recreate the session of"
                if isinstance(cmd, c.RecreateSession)
                else "re-lease ports of"
            )
            needs(verb, frozenset({L.RUNNING, L.ERROR}))
            return []
        case c.Escalate(rung=rung, attempt=attempt, reason=reason):
            ev = e.RecoveryEscalated(
                event_id=new_id(), rung=rung, attempt=attempt, reason=reason, **meta
            )
            return [ev]
        case c.ReportHealth(service=name, healthy=healthy, probe=probe, detail=detail):
            known = state.services.get(name)
            if known is None or known.healthy is healthy:
                return []  # unknown to the log, or no change: nothing to record
            return [
                e.ServiceHealth(
                    event_id=new_id(),
                    service=name,
                    healthy=healthy,
                    probe=probe,
                    detail=detail,
                    **meta,
                )
            ]
        case c.MarkRunning():
            needs("mark running", frozenset({L.SPAWNING}))
            return to(L.RUNNING, "mark running")
        case c.MarkStopped(reason=reason):
            needs("mark stopped", frozenset({L.STOPPING}))
            return to(L.STOPPED, "mark stopped", reason)
        case c.Fail(reason=reason):
            return [] if state.lifecycle is L.ERROR else to(L.ERROR, "fail", reason)
        case c.ObserveActivity(activity=act, detail=detail, source=source):
            return _observe(state, act, detail, meta, new_id, source)
        case _:
            assert_never(cmd)


def _either(values: Iterable[Lifecycle | Activity]) -> str:
    names = [v.value for v in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _create(
    state: AgentState, cmd: c.Create, meta: _Meta, new_id: Callable[[], str]
) -> list[e.AgentEvent]:
    if state.lifecycle is not L.NEW:
        raise AgentExists(state.agent_id)
    token(cmd.name, "agent name")
    branch = f"fleet/{cmd.name}"
    created = e.AgentCreated(
        event_id=new_id(),
        name=cmd.name,
        template=cmd.template,
        repo=cmd.repo,
        base_ref=cmd.base_ref,
        branch=branch,
        template_version=cmd.template_version,
        capabilities=cmd.capabilities,
        options=cmd.options,
        command=cmd.command,
        template_spec=cmd.template_spec,
        **meta,
    )
    spawning = e.LifecycleChanged(event_id=new_id(), to=L.SPAWNING, frm=L.NEW, **meta)
    return [created, spawning]


def _observe(
    state: AgentState,
    act: Activity,
    detail: str,
    meta: _Meta,
    new_id: Callable[[], str],
    source: Literal["screen", "hook"] = "screen",
) -> list[e.AgentEvent]:
    if state.lifecycle not in ACTIVE:
        raise InvalidTransition(
            state.agent_id, "observe activity of", state.lifecycle.value, "RUNNING"
        )
    if act is state.activity and (detail == state.activity_detail or act not in ACTIVITY[act]):
        return []  # nothing new, or a new detail that only matters while waiting
    if act not in ACTIVITY[state.activity]:
        sources = [a for a in Activity if act in ACTIVITY[a]]
        raise InvalidTransition(
            state.agent_id, f"mark {act.value}", state.activity.value, _either(sources)
        )
    changed = e.ActivityChanged(
        event_id=new_id(), to=act, frm=state.activity, detail=detail, source=source, **meta
    )
    return [changed]


def evolve(state: AgentState, event: e.AgentEvent) -> AgentState:
    """Apply one recorded fact. Never raises: the audit, not the fold, judges the history."""
    state = _apply(state, event)
    return replace(state, events=state.events + 1, updated_at=event.at)


def _apply(s: AgentState, ev: e.AgentEvent) -> AgentState:
    match ev:
        case e.ActivityChanged(to=to, detail=detail):
            return replace(s, activity=to, activity_detail=detail)
        case e.LifecycleChanged(to=to, reason=reason):
            return _lifecycle(s, to, reason)
        case e.InputSent():
            return s
        case e.AgentCreated():
            return replace(
                s,
                agent_id=ev.agent_id,
                name=ev.name,
                template=ev.template,
                template_version=ev.template_version,
                template_spec=ev.template_spec,
                repo=ev.repo,
                base_ref=ev.base_ref,
                branch=ev.branch,
                command=ev.command,
                capabilities=ev.capabilities,
                options=ev.options,
                created_at=ev.at,
            )
        case e.WorkspaceReady(path=path, branch=branch, head=head):
            return replace(s, worktree=path, branch=branch or s.branch, head=head)
        case e.WorkspaceRemoved():
            return replace(s, worktree="")
        case e.SessionStarted(socket=sock, session=sess, recording=rec):
            return replace(s, tmux_socket=sock, tmux_session=sess, recording=rec)
        case e.SessionClosed():
            return replace(s, tmux_session="", users=())
        case e.PortsLeased(ports=ports):
            return replace(s, ports={**s.ports, **ports})
        case e.PortsReleased(ports=ports):
            return replace(s, ports={k: v for k, v in s.ports.items() if k not in ports})
        case e.ServiceStarted() | e.ServiceExited() | e.ServiceHealth() | e.ServiceRestarted():
            return _service(s, ev)
        case e.RecoveryEscalated() | e.ResourcesExceeded():
            return s
        case e.AgentTaskStarted() | e.AgentTaskEnded():
            return s  # the task's own log holds its state; these mark the agent's timeline
        case e.CheckpointTaken():
            ref = CheckpointRef(
                checkpoint=ev.checkpoint,
                log_seq=ev.log_seq,
                commit=ev.commit,
                ref=ev.ref,
                label=ev.label,
                auto=ev.auto,
                at=ev.at,
                healthy=_all_healthy(s),
            )
            return replace(s, checkpoints=(*s.checkpoints, ref))
        case e.RolledBack(commit=commit):
            return replace(s, head=commit)
        case e.UserAttached(user=user):
            return s if user in s.users else replace(s, users=(*s.users, user))
        case e.UserDetached(user=user):
            return replace(s, users=tuple(u for u in s.users if u != user))
        case e.AgentRemoved():
            return replace(s, removed=True)
        case _:
            assert_never(ev)


def _all_healthy(s: AgentState) -> bool:
    return s.lifecycle is not L.ERROR and all(v.healthy is not False for v in s.services.values())


def _lifecycle(s: AgentState, to: Lifecycle, reason: str) -> AgentState:
    if to is L.SPAWNING:
        # A new incarnation starts idle; the previous error is kept only as history in the log.
        return replace(s, lifecycle=to, reason=reason, activity=Activity.READY, activity_detail="")
    if to is L.STOPPED:
        s = replace(s, services={}, users=())
    if to in (L.STOPPED, L.ERROR):
        # Its screen is gone or not believed: a question or login it showed is not asked now
        # (views show no activity outside RUNNING and PAUSED).
        return replace(s, lifecycle=to, reason=reason, activity=Activity.READY, activity_detail="")
    return replace(s, lifecycle=to, reason=reason)


def _service(
    s: AgentState,
    ev: e.ServiceStarted | e.ServiceExited | e.ServiceHealth | e.ServiceRestarted,
) -> AgentState:
    old = s.services.get(ev.service) or ServiceState(name=ev.service)
    match ev:
        case e.ServiceStarted(pid=pid, port=port):
            new = replace(old, state="running", pid=pid, port=port, healthy=None, health_detail="")
            new = replace(new, exit_code=None, exit_signal=None)
        case e.ServiceExited(code=code, signal=sig):
            new = replace(old, state="exited", pid=None, exit_code=code, exit_signal=sig)
            new = replace(new, healthy=None, health_detail="")
        case e.ServiceHealth(healthy=healthy, detail=detail):
            new = replace(old, healthy=healthy, health_detail=detail)
        case e.ServiceRestarted(attempt=attempt):
            state = "restarting" if old.state == "exited" else old.state
            new = replace(old, restarts=max(old.restarts + 1, attempt), state=state)
    return replace(s, services={**s.services, ev.service: new})


def fold(events: Iterable[e.AgentEvent], state: AgentState = INITIAL) -> AgentState:
    return functools.reduce(evolve, events, state)


def initial(agent_id: str) -> AgentState:
    """The state of an agent with no events yet (its id known, nothing else)."""
    return AgentState(agent_id=token(agent_id))

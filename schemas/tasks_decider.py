"""One task as a decider: its state, `decide` (command -> new facts), `evolve` and `fold`.

As for an agent (schemas/agent.py): `decide` refuses with a `FleetError` and one sentence and
emits nothing then; `evolve` applies recorded facts and never raises. No clock, no id generator
and no other task's log inside: the caller passes `now`, `new_id` and, for an assignment, the
states of the tasks this one depends on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TypedDict, assert_never

import msgspec
from msgspec.structs import replace

from schemas import tasks as t
from schemas.chain import Position
from schemas.subjects import token
from schemas.tasks import S, TaskStatus
from schemas.tasks_errors import (
    DependenciesNotDone,
    InvalidTask,
    NoAttemptsLeft,
    NotYourTask,
    StaleTaskReport,
    TaskExists,
    TaskTransition,
    UnknownTask,
)


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str = ""
    spec: t.TaskSpec = t.TaskSpec()
    status: TaskStatus = S.NEW
    agent: str = ""  # the agent holding it (ASSIGNED, RUNNING) or that held it last
    attempts: int = 0  # runs started
    reason: str = ""  # why it failed, timed out, was cancelled or requeued
    base_commit: str = ""
    result: t.TaskResult | None = None
    created_at: datetime | None = None
    queued_at: datetime | None = None  # last time it entered QUEUED
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None
    events: int = 0


class _Meta(TypedDict):
    task_id: str
    at: datetime
    actor: str
    causation: str


def initial(task_id: str) -> TaskState:
    """The state of a task with no events yet (its id known, nothing else)."""
    return TaskState(task_id=token(task_id, "task id"))


def pending_dependencies(state: TaskState, deps: Mapping[str, TaskStatus]) -> dict[str, TaskStatus]:
    """The tasks `state` depends on that are not DONE (unknown ones count as NEW)."""
    found = {d: deps.get(d, S.NEW) for d in state.spec.depends_on}
    return {d: s for d, s in found.items() if s is not S.DONE}


def blocked_for_good(state: TaskState, deps: Mapping[str, TaskStatus]) -> dict[str, TaskStatus]:
    """Dependencies that ended without DONE and cannot be retried: this task can never run."""
    gone = frozenset({S.CANCELLED})
    return {d: s for d, s in pending_dependencies(state, deps).items() if s in gone}


def decide(
    state: TaskState,
    cmd: t.TaskCommand,
    *,
    now: datetime,
    new_id: Callable[[], str],
    deps: Mapping[str, TaskStatus] | None = None,
) -> list[t.AnyTaskEvent]:
    """Check `cmd` against `state`; raise a `FleetError` or return the events that record it."""
    meta = _Meta(task_id=state.task_id, at=now, actor=cmd.by or "user", causation=cmd.id)
    if isinstance(cmd, t.CreateTask):
        return _create(state, cmd, meta, new_id)
    if state.status is S.NEW:
        raise UnknownTask(state.task_id)
    cur = state.status

    def needs(verb: str, *allowed: TaskStatus, why: str = "") -> None:
        if cur not in allowed:
            raise TaskTransition(state.task_id, verb, cur.value, _either(allowed), why)

    match cmd:
        case t.ShowTask():
            return []
        case t.Assign(agent=agent):
            needs("assign", S.QUEUED)
            pending = pending_dependencies(state, deps or {})
            if pending:
                raise DependenciesNotDone(state.task_id, {k: v.value for k, v in pending.items()})
            return [t.TaskAssigned(event_id=new_id(), agent=agent, **meta)]
        case t.Start(base_commit=base):
            needs("start", S.ASSIGNED)
            n = state.attempts + 1
            _current(state, cmd, n)
            return [
                t.TaskStarted(
                    event_id=new_id(), agent=state.agent, attempt=n, base_commit=base, **meta
                )
            ]
        case t.Release(reason=reason):
            needs("release", S.ASSIGNED)
            return [t.TaskRequeued(event_id=new_id(), frm=cur, reason=reason or "released", **meta)]
        case t.Finish(result=result):
            needs("finish", S.RUNNING)
            _current(state, cmd, state.attempts)
            return [t.TaskDone(event_id=new_id(), result=result, **meta)]
        case t.FailTask(reason=reason, result=result):
            needs("fail", S.RUNNING)
            _current(state, cmd, state.attempts)
            return [t.TaskFailed(event_id=new_id(), reason=reason, result=result, **meta)]
        case t.TimeOut(result=result):
            needs("time out", S.RUNNING)
            _current(state, cmd, state.attempts)
            ev = t.TaskTimedOut(
                event_id=new_id(), timeout_s=state.spec.timeout_s, result=result, **meta
            )
            return [ev]
        case t.Cancel(reason=reason, result=result):
            _owner(state, cmd.by, "cancel")
            if cur is S.CANCELLED:
                return []  # cancelled already: cancelling again changes nothing
            needs("cancel", S.QUEUED, S.ASSIGNED, S.RUNNING, why="it has ended")
            r = reason or "cancelled"
            return [t.TaskCancelled(event_id=new_id(), frm=cur, reason=r, result=result, **meta)]
        case t.Retry():
            _owner(state, cmd.by, "retry")
            needs("retry", *sorted(t.RETRYABLE))
            if state.attempts >= state.spec.max_attempts:
                raise NoAttemptsLeft(state.task_id, state.attempts, state.spec.max_attempts)
            return [t.TaskRequeued(event_id=new_id(), frm=cur, reason="retry", **meta)]
        case _:
            assert_never(cmd)


def _current(state: TaskState, cmd: t.Report, attempt: int) -> None:
    """A report names the run it is about (when it names one): the holder and its attempt."""
    if (cmd.agent and cmd.agent != state.agent) or (cmd.attempt and cmd.attempt != attempt):
        raise StaleTaskReport(state.task_id, cmd.agent, cmd.attempt, state.agent, attempt)


def _owner(state: TaskState, by: str, verb: str) -> None:
    """An agent acts only on the tasks it created; people and services on any."""
    if by.startswith("agent:") and by != state.spec.created_by:
        raise NotYourTask(state.task_id, by, verb)


def _either(values: Iterable[TaskStatus]) -> str:
    names = [v.value for v in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _create(
    state: TaskState, cmd: t.CreateTask, meta: _Meta, new_id: Callable[[], str]
) -> list[t.AnyTaskEvent]:
    if state.status is not S.NEW:
        raise TaskExists(state.task_id)
    if cmd.task_id and cmd.task_id != state.task_id:
        raise InvalidTask("task_id", f"{cmd.task_id!r} was sent to task {state.task_id}")
    t.check_spec(cmd.spec, state.task_id)
    spec = cmd.spec
    if not spec.created_by:
        spec = replace(spec, created_by=meta["actor"])
    return [t.TaskCreated(event_id=new_id(), spec=spec, **meta)]


def evolve(state: TaskState, event: t.AnyTaskEvent) -> TaskState:
    """Apply one recorded fact. Never raises: an audit, not the fold, judges the history."""
    state = _apply(state, event)
    return replace(state, events=state.events + 1, updated_at=event.at)


def _apply(s: TaskState, ev: t.AnyTaskEvent) -> TaskState:
    match ev:
        case t.TaskCreated(spec=spec):
            return replace(
                s, task_id=ev.task_id, spec=spec, status=S.QUEUED, created_at=ev.at, queued_at=ev.at
            )
        case t.TaskAssigned(agent=agent):
            return replace(s, status=S.ASSIGNED, agent=agent, reason="")
        case t.TaskStarted(agent=agent, attempt=n, base_commit=base):
            n = max(n, s.attempts + 1)
            return replace(
                s,
                status=S.RUNNING,
                agent=agent or s.agent,
                attempts=n,
                base_commit=base,
                result=None,
                started_at=ev.at,
                ended_at=None,
            )
        case t.TaskDone(result=r):
            return _ended(s, ev.at, S.DONE, "", r)
        case t.TaskFailed(reason=reason, result=r):
            return _ended(s, ev.at, S.FAILED, reason, r)
        case t.TaskTimedOut(timeout_s=timeout, result=r):
            return _ended(s, ev.at, S.TIMED_OUT, f"timed out after {timeout:g} s", r)
        case t.TaskCancelled(reason=reason, result=r):
            return _ended(s, ev.at, S.CANCELLED, reason, r)
        case t.TaskRequeued(reason=reason):
            return replace(s, status=S.QUEUED, agent="", reason=reason, queued_at=ev.at)
        case _:
            assert_never(ev)


def _ended(
    s: TaskState, at: datetime, status: TaskStatus, reason: str, result: t.TaskResult
) -> TaskState:
    return replace(s, status=status, reason=reason, result=result, ended_at=at)


def fold(events: Iterable[t.AnyTaskEvent], state: TaskState | None = None) -> TaskState:
    return functools.reduce(evolve, events, state if state is not None else TaskState())


BUDGET_WARNING = 0.8  # the share of a budget at which a notification goes out; at 1.0 it fails


def budget_used(spec: t.TaskSpec, tokens: int, cost_usd: float) -> float:
    """The largest share of the task's budgets that `tokens` (in + out) and `cost_usd` use
    (0.0 with no budget; a zero budget is used up by anything above zero)."""
    shares = [0.0]
    for limit, used in ((spec.budget_tokens, float(tokens)), (spec.budget_usd, cost_usd)):
        if limit is not None:
            shares.append(used / limit if limit > 0 else (1.0 if used > 0 else 0.0))
    return max(shares)


def overdue(state: TaskState, now: datetime) -> bool:
    """A running task past its `timeout_s` (the service then sends `TimeOut`)."""
    if state.status is not S.RUNNING or state.started_at is None:
        return False
    return (now - state.started_at).total_seconds() >= state.spec.timeout_s


def problem(state: TaskState, event: t.AnyTaskEvent) -> str:
    """What is wrong with `event` following `state`, by the table ("" if nothing): the audit's
    check of a task's log, which `evolve` never makes."""
    if state.task_id and event.task_id != state.task_id:
        return f"the event names task {event.task_id!r} but is in {state.task_id}'s log"
    target = _target(event, state.status)
    if target not in t.TRANSITIONS[state.status]:
        tag = event.__struct_config__.tag
        return f"{tag} takes task {event.task_id} {state.status} -> {target}, not in the table"
    if isinstance(event, t.TaskRequeued) and event.frm is not state.status:
        return f"task.requeued says from {event.frm} but the task was {state.status}"
    if isinstance(event, t.TaskStarted) and state.attempts >= state.spec.max_attempts:
        return f"attempt {event.attempt} is past max_attempts {state.spec.max_attempts}"
    return ""


def _target(event: t.AnyTaskEvent, current: TaskStatus) -> TaskStatus:
    match event:
        case t.TaskCreated() | t.TaskRequeued():
            return S.QUEUED
        case t.TaskAssigned():
            return S.ASSIGNED
        case t.TaskStarted():
            return S.RUNNING
        case t.TaskDone():
            return S.DONE
        case t.TaskFailed():
            return S.FAILED
        case t.TaskTimedOut():
            return S.TIMED_OUT
        case t.TaskCancelled():
            return S.CANCELLED
        case _:
            assert_never(event)


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """What `fleet task wait|show --json` and the REST API print for one task (issue 17)."""

    id: str
    agent: str
    state: TaskStatus
    reason: str
    attempts: int
    priority: str
    created_by: str
    result: t.TaskResult | None = None


def view(state: TaskState) -> TaskView:
    return TaskView(
        id=state.task_id,
        agent=state.agent,
        state=state.status,
        reason=state.reason,
        attempts=state.attempts,
        priority=state.spec.priority,
        created_by=state.spec.created_by,
        result=state.result,
    )


class TaskSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A task's folded state as of `position` (schemas.chain.Position), for a short replay."""

    state: TaskState
    position: Position
    version: int = 1

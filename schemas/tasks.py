"""A task as data: its states and their table, what it asks for, its result, its events, commands.

A task is an aggregate with a log of its own (`fleet.task.<task_id>`, the same single-writer,
expected-sequence, chained discipline as an agent's). The decider is in schemas/tasks_decider.py
and the dispatch order in schemas/tasks_dispatch.py; nothing here does I/O.

What is stored is never validated on decode: `check_spec` and `check_result` run from the
commands' `__post_init__`, so a rule made stricter later refuses new input but still reads every
event already in a log.
"""

from __future__ import annotations

import enum
import math
import re
import typing
from datetime import datetime

import msgspec

from schemas import validation as v
from schemas.commands import Command
from schemas.subjects import PRIORITIES, token
from schemas.tasks_errors import InvalidTask


class TaskStatus(enum.StrEnum):
    NEW = "NEW"  # before task.created: the task does not exist yet
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"  # claimed for one agent, the prompt not yet handed to it
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"


S = TaskStatus
TERMINAL = frozenset({S.DONE, S.FAILED, S.TIMED_OUT, S.CANCELLED})
RETRYABLE = frozenset({S.FAILED, S.TIMED_OUT})  # with attempts left they go back to QUEUED
HELD = frozenset({S.ASSIGNED, S.RUNNING})  # an agent holds the task

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.NEW: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.ASSIGNED, S.CANCELLED}),
    # An assigned task whose agent never started it (refused, gone) is released to the queue.
    S.ASSIGNED: frozenset({S.RUNNING, S.QUEUED, S.CANCELLED}),
    S.RUNNING: frozenset({S.DONE, S.FAILED, S.TIMED_OUT, S.CANCELLED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.TIMED_OUT: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset(),
}

Priority = typing.Literal["critical", "high", "normal", "low"]
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}  # 0 is the highest

MAX_PROMPT = 64 * 1024  # characters
MAX_MESSAGE = 256 * 1024  # the assistant's final message, characters
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_ATTEMPTS = 20
MAX_DEPENDS = 64
_CREATOR = re.compile(r"(?:(?:user|agent|service):)?[A-Za-z0-9_-]{1,64}")
_COMMIT = re.compile(r"[0-9a-f]{7,64}")


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a task asks for, as its creator gave it (recorded in task.created)."""

    prompt: str = ""
    repo: str = ""  # absolute path of the repository; "" for the agent's own
    base_ref: str = "HEAD"
    template: str = ""  # "" for any template whose agents have the capabilities
    capabilities: tuple[str, ...] = ()
    priority: Priority = "normal"
    timeout_s: float = 3600.0
    max_attempts: int = 1
    budget_tokens: int | None = None  # tokens in + out; None: no limit
    budget_usd: float | None = None
    labels: tuple[str, ...] = ()
    created_by: str = ""  # "user:<name>", "agent:<id>" or "service:<name>"
    depends_on: tuple[str, ...] = ()  # task ids that must be DONE before this one is assigned
    headless: bool = False


class TaskResult(msgspec.Struct, frozen=True, kw_only=True):
    """What came back when a task ended; zeros and "" where the assistant reported nothing."""

    message: str = ""
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    commit: str = ""  # the commit on the agent's branch named after the task
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    exit_status: int | None = None  # headless runs only


def _number(value: object, field: str, *, low: float, high: float, above: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTask(field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < low or (above and value == low) or value > high:
        bound = f"more than {low:g}" if above else f"at least {low:g}"
        raise InvalidTask(field, f"it must be {bound} and at most {high:g}, got {value!r}")


def _integer(value: object, field: str, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTask(field, f"expected a whole number, got {type(value).__name__}")
    _number(value, field, low=low, high=high)


def check_spec(spec: TaskSpec, task_id: str = "") -> TaskSpec:
    """Refuse, with one sentence, the first field of `spec` that cannot be used."""
    v.text(spec.prompt, "task prompt", MAX_PROMPT)
    if not spec.prompt.strip():
        raise InvalidTask("prompt", "it is empty; say what the agent should do")
    if spec.repo:
        v.absolute_path(spec.repo, "task repo")
    v.git_ref(spec.base_ref, "task base ref")
    if spec.template:
        v.name(spec.template, "template name")
    v.names(spec.capabilities, "capability")
    if spec.priority not in PRIORITY_RANK:
        raise InvalidTask("priority", f"{spec.priority!r} is not one of {', '.join(PRIORITIES)}")
    _number(spec.timeout_s, "timeout_s", low=0, high=MAX_TIMEOUT_S, above=True)
    _integer(spec.max_attempts, "max_attempts", low=1, high=MAX_ATTEMPTS)
    if spec.budget_tokens is not None:
        _integer(spec.budget_tokens, "budget_tokens", low=0, high=2**53)
    if spec.budget_usd is not None:
        _number(spec.budget_usd, "budget_usd", low=0, high=1e9)
    v.names(spec.labels, "task label")
    if spec.created_by and not _CREATOR.fullmatch(spec.created_by):
        raise InvalidTask(
            "created_by", f"{spec.created_by[:80]!r} is not user:NAME, agent:ID or service:NAME"
        )
    _depends(spec.depends_on, task_id)
    return spec


def _depends(depends_on: tuple[str, ...], task_id: str) -> None:
    if len(depends_on) > MAX_DEPENDS:
        raise InvalidTask("depends_on", f"at most {MAX_DEPENDS} tasks, got {len(depends_on)}")
    for dep in depends_on:
        token(dep, "task id (depends_on)")
    if task_id and task_id in depends_on:
        raise InvalidTask("depends_on", f"task {task_id} cannot depend on itself")
    if len(set(depends_on)) != len(depends_on):
        raise InvalidTask("depends_on", "a task is named twice")


def check_result(result: TaskResult) -> TaskResult:
    v.text(result.message, "task result message", MAX_MESSAGE)
    for field in ("files_changed", "insertions", "deletions", "tokens_in", "tokens_out"):
        _integer(getattr(result, field), f"result {field}", low=0, high=2**53)
    _number(result.cost_usd, "result cost_usd", low=0, high=1e9)
    _number(result.duration_s, "result duration_s", low=0, high=1e9)
    if result.commit and not _COMMIT.fullmatch(result.commit):
        raise InvalidTask("result commit", f"{result.commit[:80]!r} is not a hex commit id")
    if result.exit_status is not None:
        _integer(result.exit_status, "result exit_status", low=-255, high=255)
    return result


# Events of a task's log (`fleet.task.<task_id>`).


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    task_id: str
    event_id: str  # also sent as Nats-Msg-Id, so a retried append is stored once
    at: datetime
    actor: str = ""  # who caused it: "user:<name>", "agent:<id>", "service:tasks"
    causation: str = ""  # id of the command that led to it
    prev_hash: str = ""  # hash of the previous event of this task ("" for the first)


class TaskCreated(TaskEvent, frozen=True, tag="task.created"):
    spec: TaskSpec


class TaskAssigned(TaskEvent, frozen=True, tag="task.assigned"):
    agent: str


class TaskStarted(TaskEvent, frozen=True, tag="task.started"):
    agent: str
    attempt: int  # 1 for the first run
    base_commit: str = ""  # the worktree's commit when the task began (its change is from here)


class TaskDone(TaskEvent, frozen=True, tag="task.done"):
    result: TaskResult = TaskResult()


class TaskFailed(TaskEvent, frozen=True, tag="task.failed"):
    reason: str  # e.g. "budget", "login required", "exit status 1"
    result: TaskResult = TaskResult()


class TaskTimedOut(TaskEvent, frozen=True, tag="task.timed_out"):
    timeout_s: float
    result: TaskResult = TaskResult()


class TaskCancelled(TaskEvent, frozen=True, tag="task.cancelled"):
    frm: TaskStatus = msgspec.field(default=S.QUEUED, name="from")
    reason: str = ""
    result: TaskResult = TaskResult()


class TaskRequeued(TaskEvent, frozen=True, tag="task.requeued"):
    frm: TaskStatus = msgspec.field(name="from")  # FAILED / TIMED_OUT (retry), ASSIGNED (release)
    reason: str = ""


AnyTaskEvent = (
    TaskCreated
    | TaskAssigned
    | TaskStarted
    | TaskDone
    | TaskFailed
    | TaskTimedOut
    | TaskCancelled
    | TaskRequeued
)
TASK_EVENT_TYPES: tuple[type[TaskEvent], ...] = typing.get_args(AnyTaskEvent)
TASK_TAGS: dict[str, type[TaskEvent]] = {
    t.__struct_config__.tag: t  # type: ignore[misc]
    for t in TASK_EVENT_TYPES
}


# Commands to one task. The tasks service sends Assign/Start/Finish/Fail/TimeOut/Release as it
# dispatches and watches; a person or an agent sends Create, Cancel and Retry.


class Report(Command, frozen=True, kw_only=True):
    """A word from the run: `agent` and `attempt` (when given) must be the current run's, so a
    late report of an earlier attempt is refused instead of ending the current one."""

    agent: str = ""
    attempt: int = 0  # 0: not said

    def _check(self) -> None:
        if self.agent:
            v.name(self.agent, "agent id")
        _integer(self.attempt, "attempt", low=0, high=MAX_ATTEMPTS)
        self._fields()

    def _fields(self) -> None:
        """The report's own fields."""


class CreateTask(Command, frozen=True, tag="create"):
    spec: TaskSpec
    task_id: str = ""  # checked against the aggregate's id by decide

    def _check(self) -> None:
        if self.task_id:
            token(self.task_id, "task id")
        check_spec(self.spec, self.task_id)


class Assign(Command, frozen=True, tag="assign"):
    agent: str

    def _check(self) -> None:
        v.name(self.agent, "agent id")


class Start(Report, frozen=True, tag="start"):
    base_commit: str = ""

    def _fields(self) -> None:
        if self.base_commit and not _COMMIT.fullmatch(self.base_commit):
            raise InvalidTask("base_commit", f"{self.base_commit[:80]!r} is not a hex commit id")


class Finish(Report, frozen=True, tag="finish"):
    result: TaskResult = TaskResult()

    def _fields(self) -> None:
        check_result(self.result)


class FailTask(Report, frozen=True, tag="fail"):
    reason: str
    result: TaskResult = TaskResult()

    def _fields(self) -> None:
        v.line(self.reason, "failure reason", v.MAX_TEXT_LINE)
        if not self.reason:
            raise InvalidTask("reason", "say why the task failed")
        check_result(self.result)


class TimeOut(Report, frozen=True, tag="time_out"):
    result: TaskResult = TaskResult()

    def _fields(self) -> None:
        check_result(self.result)


class Cancel(Command, frozen=True, tag="cancel"):
    reason: str = ""
    result: TaskResult = TaskResult()  # what a running task had done when it was stopped

    def _check(self) -> None:
        v.line(self.reason, "cancel reason", v.MAX_TEXT_LINE)
        check_result(self.result)


class Retry(Command, frozen=True, tag="retry"):
    pass


class Release(Command, frozen=True, tag="release"):
    """An assigned task that its agent never started goes back to the queue (no attempt used)."""

    reason: str = ""

    def _check(self) -> None:
        v.line(self.reason, "release reason", v.MAX_TEXT_LINE)


class ShowTask(Command, frozen=True, tag="show"):
    pass


TaskCommand = (
    CreateTask | Assign | Start | Finish | FailTask | TimeOut | Cancel | Retry | Release | ShowTask
)
TASK_COMMAND_TYPES: tuple[type[Command], ...] = typing.get_args(TaskCommand)

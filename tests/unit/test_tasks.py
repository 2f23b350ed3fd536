"""A task's decider (schemas/tasks_decider.py): random command sequences keep its invariants.

Every recorded change of status is in `TRANSITIONS`, a refusal is a `FleetError` with a sentence
and emits nothing, attempts never pass `max_attempts`, a task is assigned only when no agent
holds it, the fold of the log equals the state built event by event, and every bad field of a
task is refused with one sentence naming it.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import tasks as t
from schemas.errors import FleetError, InvalidName
from schemas.tasks import TERMINAL, TRANSITIONS, S, TaskStatus
from schemas.tasks_decider import (
    TaskState,
    TaskView,
    budget_used,
    decide,
    evolve,
    fold,
    initial,
    overdue,
    problem,
    view,
)
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

TASK = "t1"
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
SPEC = t.TaskSpec(prompt="Fix the failing test", capabilities=("python",), max_attempts=3)
CREATE = t.CreateTask(id="c0", by="user:ada", spec=SPEC)


def status_of(event: t.AnyTaskEvent, before: TaskStatus) -> TaskStatus:
    """The status an event leads to, read from the event alone (not from evolve)."""
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
    raise AssertionError(f"no status for {event!r}")


class Run:
    """One task driven command by command, checking each decision as it is applied."""

    def __init__(self, deps: dict[str, TaskStatus] | None = None) -> None:
        self.state = initial(TASK)
        self.deps = deps or {}
        self.events: list[t.AnyTaskEvent] = []
        self.refused: list[FleetError] = []
        self.holders: list[str] = []  # the agent of each assignment, in order
        self._ids = (f"evt-{n}" for n in itertools.count())
        self._clock = (T0 + timedelta(seconds=n) for n in itertools.count())

    def apply(self, cmd: t.TaskCommand) -> None:
        before = msgspec.json.encode(self.state)
        now = next(self._clock)
        try:
            decided = decide(
                self.state, cmd, now=now, new_id=lambda: next(self._ids), deps=self.deps
            )
        except FleetError as err:
            message = str(err)
            assert message and "\n" not in message and err.code, (
                f"a refusal needs a sentence: {err!r}"
            )
            assert msgspec.json.encode(self.state) == before, "a refusal changes nothing"
            self.refused.append(err)
            return
        assert msgspec.json.encode(self.state) == before, "decide must not mutate the state"
        for event in decided:
            assert event.task_id == TASK and event.at == now and event.causation == cmd.id
            old = self.state
            target = status_of(event, old.status)
            assert target in TRANSITIONS[old.status], (
                f"{old.status} -> {target} is not in the table"
            )
            if isinstance(cmd, t.Report) and cmd.agent:
                assert cmd.agent == old.agent, "a report of another agent's run was recorded"
            if isinstance(cmd, t.Report) and cmd.attempt:
                run_no = old.attempts + isinstance(cmd, t.Start)
                assert cmd.attempt == run_no, "a report of another attempt was recorded"
            if isinstance(event, t.TaskAssigned):
                assert old.status is S.QUEUED and old.agent == "", (
                    "assigned while an agent holds it"
                )
                self.holders.append(event.agent)
            self.state = evolve(old, event)
            self.events.append(event)
            check_invariants(self.state)


def check_invariants(s: TaskState) -> None:
    # exactly one status at a time, and the fields that go with it
    assert sum(s.status is x for x in TaskStatus) == 1
    assert 0 <= s.attempts <= s.spec.max_attempts
    if s.status in (S.ASSIGNED, S.RUNNING):
        assert s.agent, "a held task names its agent"
    if s.status is S.QUEUED:
        assert s.agent == "", "a queued task has no agent"
    if s.status is S.RUNNING:
        assert s.attempts >= 1 and s.result is None
    if s.status in TERMINAL:
        assert s.result is not None and s.ended_at is not None


AGENTS = st.sampled_from(["a1", "a2", "a3"])
BY = st.sampled_from(["", "user:ada", "agent:a1", "agent:a2", "service:tasks"])
RESULTS = st.builds(
    t.TaskResult,
    message=st.text(st.characters(exclude_characters="\x00"), max_size=20),
    files_changed=st.integers(0, 50),
    tokens_in=st.integers(0, 10_000),
    cost_usd=st.floats(0, 10, allow_nan=False),
)


def _cmd(
    kind: type[t.TaskCommand], **fields: st.SearchStrategy[object]
) -> st.SearchStrategy[t.TaskCommand]:
    return st.builds(kind, id=st.sampled_from(["", "cmd-1", "cmd-2"]), by=BY, **fields)


# mostly unsaid (the service speaking), sometimes a run's own word, right or stale
WHO = {
    "agent": st.sampled_from(["", "", "", "a1", "a2"]),
    "attempt": st.sampled_from([0, 0, 0, 1, 2, 3]),
}
# The run's own steps come three times as often as the rest, so that sequences reach RUNNING,
# the ends and the retries, not only early cancels and refusals.
RUN_STEPS = [
    _cmd(t.Assign, agent=AGENTS),
    _cmd(t.Start, **WHO),
    _cmd(t.Finish, result=RESULTS, **WHO),
    _cmd(t.FailTask, reason=st.sampled_from(["budget", "login required", "exit status 1"]), **WHO),
    _cmd(t.TimeOut, **WHO),
    _cmd(t.Retry),
]
COMMANDS: st.SearchStrategy[t.TaskCommand] = st.one_of(
    *RUN_STEPS * 3,
    _cmd(t.CreateTask, spec=st.just(SPEC)),
    _cmd(t.Release),
    _cmd(t.Cancel),
    _cmd(t.ShowTask),
)
STATUSES = st.sampled_from(list(TaskStatus))


def plausible(s: TaskState) -> list[t.TaskCommand]:
    """Commands a tasks service would send next in status `s.status` (and a cancel)."""
    me = {"agent": s.agent, "attempt": s.attempts}
    nxt: dict[TaskStatus, list[t.TaskCommand]] = {
        S.QUEUED: [t.Assign(agent="a1"), t.Assign(agent="a2")],
        S.ASSIGNED: [t.Start(agent=s.agent, attempt=s.attempts + 1), t.Release()],
        S.RUNNING: [t.Finish(**me), t.FailTask(reason="budget", **me), t.TimeOut(**me)],
        S.FAILED: [t.Retry()],
        S.TIMED_OUT: [t.Retry()],
    }
    return [*nxt.get(s.status, [t.ShowTask()]), t.Cancel(by="user:ada")]


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    max_attempts=st.integers(1, 3),
    dep=st.sampled_from([S.DONE] * 8 + list(TaskStatus)),
)
def test_any_command_sequence_keeps_the_invariants(
    data: st.DataObject, max_attempts: int, dep: TaskStatus
) -> None:
    spec = msgspec.structs.replace(SPEC, max_attempts=max_attempts, depends_on=("t0",))
    run = Run(deps={"t0": dep})
    run.apply(msgspec.structs.replace(CREATE, spec=spec))
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        # a quarter of the steps are any command; the rest one that the run would send next,
        # so sequences reach the ends and the retries past max_attempts, not only refusals
        anything = data.draw(st.integers(0, 3), label="any") == 0
        pick = COMMANDS if anything else st.sampled_from(plausible(run.state))
        run.apply(data.draw(pick))
    assert fold(run.events) == run.state, "the fold of the log is the state built step by step"
    assert run.state.attempts == sum(isinstance(e, t.TaskStarted) for e in run.events)
    if dep is not S.DONE:
        assert not run.holders, "assigned although its dependency was not DONE"
    # between two assignments the task went back to the queue: never two holders at once
    marks = [type(e) for e in run.events if isinstance(e, t.TaskAssigned | t.TaskRequeued)]
    for a, b in itertools.pairwise(marks):
        assert not (a is b is t.TaskAssigned), "assigned twice without going back to the queue"


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.sampled_from(t.TASK_EVENT_TYPES), max_size=30))
def test_evolve_applies_any_event_sequence_without_raising(events: list[type[t.TaskEvent]]) -> None:
    """A log the table would not allow still folds: the audit judges it, not the fold."""
    samples: dict[type[t.TaskEvent], t.AnyTaskEvent] = {
        t.TaskCreated: t.TaskCreated(task_id=TASK, event_id="e", at=T0, spec=SPEC),
        t.TaskAssigned: t.TaskAssigned(task_id=TASK, event_id="e", at=T0, agent="a1"),
        t.TaskStarted: t.TaskStarted(task_id=TASK, event_id="e", at=T0, agent="a1", attempt=1),
        t.TaskDone: t.TaskDone(task_id=TASK, event_id="e", at=T0),
        t.TaskFailed: t.TaskFailed(task_id=TASK, event_id="e", at=T0, reason="x"),
        t.TaskTimedOut: t.TaskTimedOut(task_id=TASK, event_id="e", at=T0, timeout_s=5),
        t.TaskCancelled: t.TaskCancelled(task_id=TASK, event_id="e", at=T0),
        t.TaskRequeued: t.TaskRequeued(task_id=TASK, event_id="e", at=T0, frm=S.FAILED),
    }
    state = fold(samples[k] for k in events)
    assert state.events == len(events)


def drive(*cmds: t.TaskCommand, deps: dict[str, TaskStatus] | None = None) -> Run:
    run = Run(deps)
    run.apply(CREATE)
    for cmd in cmds:
        run.apply(cmd)
    return run


def test_a_task_runs_fails_is_retried_and_ends_done_with_its_result() -> None:
    result = t.TaskResult(
        message="fixed", files_changed=2, insertions=5, commit="abc1234", cost_usd=0.12
    )
    run = drive(
        t.Assign(agent="a1"),
        t.Start(base_commit="deadbeef"),
        t.TimeOut(),
        t.Retry(by="user:ada"),
        t.Assign(agent="a2"),
        t.Start(),
        t.Finish(result=result),
    )
    assert not run.refused
    s = run.state
    assert (s.status, s.agent, s.attempts, s.result) == (S.DONE, "a2", 2, result)
    assert [e.__struct_config__.tag for e in run.events] == [
        "task.created",
        "task.assigned",
        "task.started",
        "task.timed_out",
        "task.requeued",
        "task.assigned",
        "task.started",
        "task.done",
    ]
    assert s.spec.created_by == "user:ada", "the creator is recorded from the command's sender"


def test_refusals_say_why_in_one_sentence() -> None:
    done = drive(t.Assign(agent="a1"), t.Start(), t.Finish())
    with pytest.raises(TaskTransition, match=r"cannot cancel task t1: it is DONE, not QUEUED"):
        decide(done.state, t.Cancel(), now=T0, new_id=lambda: "x")
    with pytest.raises(TaskExists):
        decide(done.state, CREATE, now=T0, new_id=lambda: "x")
    with pytest.raises(UnknownTask, match="there is no task 't9'"):
        decide(initial("t9"), t.Assign(agent="a1"), now=T0, new_id=lambda: "x")
    once = drive(t.Assign(agent="a1"), t.Start(), t.FailTask(reason="exit status 1"))
    spent = msgspec.structs.replace(once.state, spec=msgspec.structs.replace(SPEC, max_attempts=1))
    with pytest.raises(NoAttemptsLeft, match="used 1 of its 1 attempt"):
        decide(spent, t.Retry(), now=T0, new_id=lambda: "x")
    with pytest.raises(TaskTransition, match="cannot assign task t1: it is RUNNING, not QUEUED"):
        decide(
            drive(t.Assign(agent="a1"), t.Start()).state,
            t.Assign(agent="a2"),
            now=T0,
            new_id=lambda: "x",
        )


def test_assign_waits_for_every_dependency_to_be_done() -> None:
    spec = msgspec.structs.replace(SPEC, depends_on=("t0", "tx"))
    s = fold(decide(initial(TASK), t.CreateTask(spec=spec), now=T0, new_id=lambda: "e"))
    with pytest.raises(DependenciesNotDone, match=r"depends on t0 \(RUNNING\), tx \(NEW\)"):
        decide(s, t.Assign(agent="a1"), now=T0, new_id=lambda: "e", deps={"t0": S.RUNNING})
    ok = decide(
        s, t.Assign(agent="a1"), now=T0, new_id=lambda: "e", deps={"t0": S.DONE, "tx": S.DONE}
    )
    assert [type(e) for e in ok] == [t.TaskAssigned]


def test_a_late_report_of_an_earlier_run_is_refused() -> None:
    run = drive(
        t.Assign(agent="a1"),
        t.Start(agent="a1", attempt=1),
        t.TimeOut(),
        t.Retry(),
        t.Assign(agent="a2"),
        t.Start(agent="a2", attempt=2),
    )
    assert not run.refused
    late = t.Finish(agent="a1", attempt=1, result=t.TaskResult(message="done at last"))
    with pytest.raises(
        StaleTaskReport,
        match=r"attempt 1 of task t1 is stale \(attempt 2 is held by a2\); nothing was recorded",
    ):
        decide(run.state, late, now=T0, new_id=lambda: "e")
    with pytest.raises(StaleTaskReport):
        decide(run.state, t.FailTask(agent="a2", attempt=1, reason="x"), now=T0, new_id=lambda: "e")
    ok = decide(run.state, t.Finish(agent="a2", attempt=2), now=T0, new_id=lambda: "e")
    assert [type(e) for e in ok] == [t.TaskDone]


def test_an_agent_cancels_and_retries_only_the_tasks_it_created() -> None:
    mine = Run()
    mine.apply(t.CreateTask(by="agent:a1", spec=SPEC))
    with pytest.raises(NotYourTask, match="agent:a2 cannot cancel task t1"):
        decide(mine.state, t.Cancel(by="agent:a2"), now=T0, new_id=lambda: "e")
    mine.apply(t.Cancel(by="agent:a1"))
    assert mine.state.status is S.CANCELLED and not mine.refused
    again = decide(mine.state, t.Cancel(by="user:ada"), now=T0, new_id=lambda: "e")
    assert again == [], "cancelling a cancelled task changes nothing"


def test_a_released_task_goes_back_to_the_queue_without_using_an_attempt() -> None:
    run = drive(t.Assign(agent="a1"), t.Release(reason="agent a1 stopped"), t.Assign(agent="a2"))
    assert (run.state.status, run.state.agent, run.state.attempts) == (S.ASSIGNED, "a2", 0)


def spec_json(**fields: object) -> bytes:
    return msgspec.json.encode({"type": "create", "spec": {"prompt": "Fix it", **fields}})


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"prompt": ""}, InvalidTask, "prompt: it is empty"),
        ({"prompt": "x" * (t.MAX_PROMPT + 1)}, InvalidName, "at most 65536 characters"),
        ({"prompt": "a\x00b"}, InvalidName, "NUL"),
        ({"timeout_s": 0}, InvalidTask, "timeout_s: it must be more than 0"),
        ({"timeout_s": -5}, InvalidTask, "timeout_s"),
        ({"max_attempts": 0}, InvalidTask, "max_attempts: it must be at least 1"),
        ({"max_attempts": 999}, InvalidTask, "at most 20"),
        ({"budget_tokens": -1}, InvalidTask, "budget_tokens: it must be at least 0"),
        ({"budget_usd": -0.01}, InvalidTask, "budget_usd"),
        ({"labels": ["ok", "not ok"]}, InvalidName, "task label 'not ok'"),
        ({"capabilities": ["py.thon"]}, InvalidName, "capability"),
        ({"template": "../x"}, InvalidName, "template name"),
        ({"repo": "relative/path"}, InvalidName, "absolute path"),
        ({"base_ref": "--upload-pack=x"}, InvalidName, "base ref"),
        ({"created_by": "root; rm -rf /"}, InvalidTask, "created_by"),
        ({"depends_on": ["t2", "t2"]}, InvalidTask, "named twice"),
        ({"depends_on": ["a.b"]}, InvalidName, "depends_on"),
    ],
)
def test_bad_fields_are_refused_with_one_sentence(
    fields: dict[str, object], error: type[FleetError], words: str
) -> None:
    with pytest.raises(error) as caught:
        msgspec.json.decode(spec_json(**fields), type=t.TaskCommand)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_priority_and_a_self_dependency_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="priority"):
        msgspec.json.decode(spec_json(priority="urgent"), type=t.TaskCommand)
    with pytest.raises(InvalidTask, match="priority"):
        t.check_spec(t.TaskSpec(prompt="x", priority="urgent"))  # type: ignore[arg-type]
    with pytest.raises(InvalidTask, match="task t1 cannot depend on itself"):
        decide(
            initial(TASK),
            t.CreateTask(spec=msgspec.structs.replace(SPEC, depends_on=(TASK,))),
            now=T0,
            new_id=lambda: "e",
        )
    bad_result = {"type": "finish", "result": {"tokens_in": -3}}
    with pytest.raises(InvalidTask, match="result tokens_in"):
        msgspec.json.decode(msgspec.json.encode(bad_result), type=t.TaskCommand)


def test_every_task_event_round_trips_and_tags_are_unique() -> None:
    assert len(t.TASK_TAGS) == len(t.TASK_EVENT_TYPES)
    run = drive(t.Assign(agent="a1"), t.Start(), t.FailTask(reason="budget"), t.Retry(), t.Cancel())
    for event in run.events:
        raw = msgspec.json.encode(event)
        assert msgspec.json.decode(raw, type=t.AnyTaskEvent) == event
    # a stored event is read even if a rule became stricter since (no validation on decode)
    old = t.TaskCreated(task_id=TASK, event_id="e", at=T0, spec=t.TaskSpec(prompt="", timeout_s=0))
    assert msgspec.json.decode(msgspec.json.encode(old), type=t.AnyTaskEvent) == old


def test_the_agent_log_marks_a_task_and_its_fold_changes_nothing_else() -> None:
    from schemas import events as e
    from schemas.agent import fold as agent_fold

    head = {"agent_id": "a1", "at": T0}
    created = e.AgentCreated(event_id="e1", name="a1", template="claude", repo="/src", **head)
    before = agent_fold([created])
    marks = [
        e.AgentTaskStarted(event_id="e2", task_id=TASK, attempt=1, **head),
        e.AgentTaskEnded(event_id="e3", task_id=TASK, status="DONE", **head),
    ]
    after = agent_fold(marks, before)
    assert msgspec.structs.replace(after, events=before.events) == before
    assert after.events == 3
    for mark in marks:
        assert msgspec.json.decode(msgspec.json.encode(mark), type=e.AgentEvent) == mark


def test_the_audit_check_flags_what_the_table_does_not_allow() -> None:
    run = drive(t.Assign(agent="a1"), t.Start(), t.FailTask(reason="budget"))
    queued = fold(run.events[:1])
    done = t.TaskDone(task_id=TASK, event_id="x", at=T0)
    assert "QUEUED -> DONE, not in the table" in problem(queued, done)
    other = t.TaskAssigned(task_id="t2", event_id="x", at=T0, agent="a1")
    assert "names task 't2'" in problem(queued, other)
    wrong_from = t.TaskRequeued(task_id=TASK, event_id="x", at=T0, frm=S.TIMED_OUT)
    assert "from TIMED_OUT but the task was FAILED" in problem(run.state, wrong_from)
    spent = msgspec.structs.replace(run.state, status=S.ASSIGNED, attempts=3)
    again = t.TaskStarted(task_id=TASK, event_id="x", at=T0, agent="a1", attempt=4)
    assert "past max_attempts 3" in problem(spent, again)


def test_the_view_has_the_fields_fleet_task_wait_prints() -> None:
    run = drive(t.Assign(agent="a1"), t.Start(), t.Finish(result=t.TaskResult(message="ok")))
    shown = msgspec.json.decode(msgspec.json.encode(view(run.state)))
    assert {"id", "agent", "state", "reason", "result"} <= set(shown)
    assert (shown["id"], shown["agent"], shown["state"]) == (TASK, "a1", "DONE")
    wanted = {"message", "files_changed", "insertions", "deletions", "commit", "tokens_in"}
    wanted |= {"tokens_out", "cost_usd", "duration_s", "exit_status"}
    assert set(shown["result"]) == wanted


def test_budget_share_and_timeout() -> None:
    both = msgspec.structs.replace(SPEC, budget_tokens=1000, budget_usd=2.0)
    assert budget_used(SPEC, 10**9, 1e6) == 0.0, "no budget, no limit"
    assert budget_used(both, 800, 0.5) == pytest.approx(0.8)
    assert budget_used(both, 100, 2.5) == pytest.approx(1.25)
    free = msgspec.structs.replace(SPEC, budget_usd=0.0)
    assert (budget_used(free, 5, 0.0), budget_used(free, 0, 0.01)) == (0.0, 1.0)
    run = drive(t.Assign(agent="a1"), t.Start())
    started = run.state.started_at
    assert started is not None
    assert not overdue(run.state, started + timedelta(seconds=SPEC.timeout_s - 1))
    assert overdue(run.state, started + timedelta(seconds=SPEC.timeout_s))
    assert not overdue(drive().state, started + timedelta(days=30)), "only a running task"


TASK_GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tasks"


@pytest.mark.parametrize("tag", sorted(t.TASK_TAGS))
def test_every_task_tag_has_a_golden_file_that_decodes_with_todays_code(tag: str) -> None:
    """tests/golden/tasks/ is frozen like tests/golden/ (its README): a task's log outlives
    the code that wrote it."""
    path = TASK_GOLDEN / f"{tag}.json"
    assert path.is_file(), f"task tag {tag!r} has no golden file: add it to make_golden.py"
    raw = msgspec.json.decode(path.read_bytes())
    event = msgspec.json.decode(path.read_bytes(), type=t.AnyTaskEvent)
    assert type(event) is t.TASK_TAGS[raw["type"]] and raw["type"] == tag
    again = msgspec.json.decode(msgspec.json.encode(event))
    lost = sorted(set(raw) - set(again))
    assert not lost, f"{type(event).__name__} lost field(s) {lost} that shipped events hold"
    for key, value in raw.items():
        if key != "at":
            assert again[key] == value, f"{key}: golden {value!r}, decoded {again[key]!r}"


def test_task_commands_events_and_view_export_a_json_schema() -> None:
    """For `fleet schema` and the OpenAPI once fleet.ctl.task.* is served (schemas/wire.py)."""
    commands = msgspec.json.schema(t.TaskCommand)
    tagged = [d for d in commands["$defs"].values() if "type" in d.get("properties", {})]
    tags = {d["properties"]["type"]["enum"][0] for d in tagged}
    assert tags == {c.__struct_config__.tag for c in t.TASK_COMMAND_TYPES}
    events = msgspec.json.schema(t.AnyTaskEvent)
    defs = [d for d in events["$defs"].values() if "type" in d.get("properties", {})]
    assert {d["properties"]["type"]["enum"][0] for d in defs} == set(t.TASK_TAGS)
    assert "result" in msgspec.json.schema(TaskView)["$defs"]["TaskView"]["properties"]


def test_a_task_whose_dependency_was_cancelled_is_blocked_for_good() -> None:
    from schemas.tasks_decider import blocked_for_good, pending_dependencies

    spec = msgspec.structs.replace(SPEC, depends_on=("t0", "t2", "t3"))
    s = fold(decide(initial(TASK), t.CreateTask(spec=spec), now=T0, new_id=lambda: "e"))
    deps = {"t0": S.DONE, "t2": S.CANCELLED, "t3": S.FAILED}
    assert pending_dependencies(s, deps) == {"t2": S.CANCELLED, "t3": S.FAILED}
    assert blocked_for_good(s, deps) == {"t2": S.CANCELLED}, "a FAILED one may still be retried"

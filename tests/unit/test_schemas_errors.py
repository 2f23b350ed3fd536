"""The sentences a person reads when fleetd refuses, checked word for word."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from schemas import commands as c
from schemas import errors, tasks_errors
from schemas.agent import AgentState, decide, evolve, initial
from schemas.errors import (
    AgentExists,
    FleetError,
    InvalidName,
    InvalidTransition,
    UnknownAgent,
)
from schemas.events import ActivityChanged
from schemas.states import Activity, Lifecycle

NOW = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


def run(*cmds: c.AgentCommand, agent_id: str = "a1") -> AgentState:
    """The state of an agent after `cmds`, each of which must be accepted."""
    state = initial(agent_id)
    for cmd in cmds:
        state = apply(state, cmd)
    return state


def apply(state: AgentState, cmd: c.AgentCommand) -> AgentState:
    ids = (f"e{n}" for n in itertools.count(state.events))
    for event in decide(state, cmd, now=NOW, new_id=lambda: next(ids)):
        state = evolve(state, event)
    return state


def refusal(state: AgentState, cmd: c.AgentCommand) -> FleetError:
    with pytest.raises(FleetError) as info:
        decide(state, cmd, now=NOW, new_id=lambda: "e")
    return info.value


CREATE = c.Create(name="a1")
RUNNING = (CREATE, c.MarkRunning())
PAUSED = (*RUNNING, c.Pause())
STOPPED = (*RUNNING, c.Stop(), c.MarkStopped())


def test_invalid_transition_sentence() -> None:
    err = InvalidTransition("a1", "pause", "STOPPED", "RUNNING")
    assert str(err) == "cannot pause agent a1: it is STOPPED, not RUNNING"
    assert (err.agent_id, err.verb, err.current, err.needs) == ("a1", "pause", "STOPPED", "RUNNING")
    assert err.code == "invalid_transition"


def test_pause_when_stopped() -> None:
    err = refusal(run(*STOPPED), c.Pause())
    assert type(err) is InvalidTransition
    assert str(err) == "cannot pause agent a1: it is STOPPED, not RUNNING"


def test_pause_when_paused() -> None:
    assert str(refusal(run(*PAUSED), c.Pause())) == (
        "cannot pause agent a1: it is PAUSED, not RUNNING"
    )


def test_resume_when_running() -> None:
    err = refusal(run(*RUNNING), c.Resume())
    assert str(err) == "cannot resume agent a1: it is RUNNING, not PAUSED"


def test_send_when_paused() -> None:
    err = refusal(run(*PAUSED), c.Send(text="hello"))
    assert str(err) == "cannot send input to agent a1: it is PAUSED, not RUNNING"


def test_restart_while_spawning_names_both_sources() -> None:
    err = refusal(run(CREATE), c.Restart())
    assert str(err) == "cannot restart agent a1: it is SPAWNING, not STOPPED or ERROR"


def test_remove_while_running() -> None:
    err = refusal(run(*RUNNING), c.Remove())
    assert str(err) == "cannot remove agent a1: it is RUNNING, not STOPPED or ERROR"


def test_observe_activity_when_paused() -> None:
    err = refusal(run(*PAUSED), c.ObserveActivity(activity=Activity.WORKING))
    assert str(err) == "cannot observe activity of agent a1: it is PAUSED, not RUNNING"


def test_activity_outside_its_table() -> None:
    waiting = run(*RUNNING, c.ObserveActivity(activity=Activity.AWAITING_INPUT, detail="y/n?"))
    err = refusal(waiting, c.ObserveActivity(activity=Activity.VALIDATING))
    assert str(err) == (
        "cannot mark VALIDATING agent a1: it is AWAITING_INPUT, not READY or WORKING"
    )


@pytest.mark.parametrize("cmd", [c.Pause(), c.Show(), c.Send(text="hi"), c.Remove()])
def test_any_command_to_an_unknown_agent(cmd: c.AgentCommand) -> None:
    err = refusal(initial("x"), cmd)
    assert type(err) is UnknownAgent
    assert str(err) == "there is no agent 'x'"
    assert err.code == "unknown_agent"


def test_a_removed_agent_is_unknown() -> None:
    removed = run(*STOPPED, c.Remove())
    assert removed.removed
    assert str(refusal(removed, c.Show())) == "there is no agent 'a1'"


def test_create_twice() -> None:
    err = refusal(run(CREATE), CREATE)
    assert type(err) is AgentExists
    assert str(err) == "an agent named 'a1' already exists; choose another name"
    assert err.code == "agent_exists"


def test_create_with_an_unsafe_name() -> None:
    """Refused as the command is made (schemas.validation), before any decision."""
    with pytest.raises(InvalidName) as err:
        c.Create(name="my agent")
    assert str(err.value).startswith("invalid agent name 'my agent': use 1 to 64 letters")


def test_attach_with_an_unsafe_user() -> None:
    with pytest.raises(InvalidName) as err:
        c.Attach(user="ada lovelace")
    assert str(err.value).startswith("invalid user 'ada lovelace': use 1 to 64 letters")


def test_a_new_question_while_waiting_is_recorded_as_a_detail_update() -> None:
    """Same waiting activity, new question: recorded (the table allows waiting -> waiting)."""
    waiting = run(*RUNNING, c.ObserveActivity(activity=Activity.AWAITING_INPUT, detail="y/n?"))
    again = c.ObserveActivity(activity=Activity.AWAITING_INPUT, detail="Overwrite file? y/n")
    [event] = decide(waiting, again, now=NOW, new_id=lambda: "e9")
    assert isinstance(event, ActivityChanged)
    assert event.frm is event.to is Activity.AWAITING_INPUT
    assert evolve(waiting, event).activity_detail == "Overwrite file? y/n"
    same = c.ObserveActivity(activity=Activity.AWAITING_INPUT, detail="y/n?")
    assert decide(waiting, same, now=NOW, new_id=lambda: "e9") == []


def test_a_new_detail_while_working_is_not_recorded() -> None:
    working = run(*RUNNING, c.ObserveActivity(activity=Activity.WORKING, detail="Reading files"))
    again = c.ObserveActivity(activity=Activity.WORKING, detail="Writing tests")
    assert decide(working, again, now=NOW, new_id=lambda: "e9") == []


def test_stop_twice_changes_nothing() -> None:
    stopping = run(*RUNNING, c.Stop())
    assert stopping.lifecycle is Lifecycle.STOPPING
    assert decide(stopping, c.Stop(), now=NOW, new_id=lambda: "e") == []


def test_initial_refuses_an_unsafe_agent_id() -> None:
    with pytest.raises(InvalidName, match=r"^invalid agent id 'a\.b': "):
        initial("a.b")


def all_subclasses(cls: type) -> list[type]:
    return [sub for s in cls.__subclasses__() for sub in (s, *all_subclasses(s))]


def test_every_error_is_a_fleet_error_with_its_own_code() -> None:
    modules = (errors, tasks_errors)  # the hierarchy, and the tasks' part of it
    classes = [cls for m in modules for cls in vars(m).values() if isinstance(cls, type)]
    classes = [cls for cls in classes if issubclass(cls, Exception)]
    assert all(issubclass(cls, FleetError) for cls in classes)
    names = {m.__name__ for m in modules}
    codes = [cls.code for cls in all_subclasses(FleetError) if cls.__module__ in names]
    assert "invalid_task_transition" in codes, "schemas/tasks_errors.py was not read"
    assert len(codes) == len(set(codes)), f"two error classes share a code: {sorted(codes)}"
    assert FleetError.code not in codes


@pytest.mark.parametrize(
    ("err", "sentence"),
    [
        (
            errors.ConcurrentUpdate("a1", 41),
            "agent a1's log moved past sequence 41 while this writer was deciding; "
            "reload the agent and retry",
        ),
        (
            errors.PayloadTooLarge("request", 70000, 65536),
            "request is 70000 bytes, more than the limit of 65536 bytes",
        ),
        (
            errors.InvalidSetting("FLEET_NATS_URL", "x", "not a URL"),
            "FLEET_NATS_URL='x' cannot be used: not a URL",
        ),
        (errors.SessionMissing("a1", "fleetd"), "there is no tmux session 'a1' on socket 'fleetd'"),
        (
            errors.WorktreeHasWork("a1", "/w/a1", True, 2),
            "the worktree of agent a1 at /w/a1 has uncommitted changes and 2 unmerged commit(s); "
            "use --force to remove it (its state is saved to a ref under refs/fleet/saved/ first)",
        ),
    ],
)
def test_error_sentences(err: FleetError, sentence: str) -> None:
    assert str(err) == err.message == sentence
    assert err.args == (sentence,)

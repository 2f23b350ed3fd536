"""Hypothesis drives random command sequences through `decide` and `evolve` (CONTRIBUTING.md).

Every recorded transition must be in the tables of schemas/states.py, every refusal must be a
`FleetError` with a sentence, and `evolve` must apply any event sequence without raising.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import commands as c
from schemas import events as e
from schemas.agent import INITIAL, AgentState, decide, evolve, fold, initial
from schemas.errors import FleetError, InvalidName, InvalidTransition, UnknownAgent
from schemas.states import ACTIVITY, LIFECYCLE, Lifecycle
from tests.unit.test_schemas_strategies import (
    COMMON,
    command_st,
    commands_st,
    events_st,
    struct_st,
)

AGENT = "a1"
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
CREATE = c.Create(id="c0", by="user:ada", name=AGENT, template="claude", repo="/src/shop")


class Run:
    """One agent driven command by command, checking each decision as it is applied."""

    def __init__(self) -> None:
        self.state = initial(AGENT)
        self.events: list[e.AgentEvent] = []
        self.refused: list[FleetError] = []
        self._ids = (f"evt-{n}" for n in itertools.count())
        self._clock = (T0 + timedelta(seconds=n) for n in itertools.count())

    def new_id(self) -> str:
        return next(self._ids)

    def apply(self, cmd: c.AgentCommand) -> None:
        before = msgspec.json.encode(self.state)
        now = next(self._clock)
        try:
            decided = decide(self.state, cmd, now=now, new_id=self.new_id)
        except FleetError as err:
            check_refusal(err, cmd)
            # (e) a refusal records nothing and leaves the state as it was, nested dicts too
            assert msgspec.json.encode(self.state) == before
            self.refused.append(err)
            return
        assert msgspec.json.encode(self.state) == before, "decide must not mutate the state"
        for event in decided:
            check_meta(event, cmd, now)
            check_transition(self.state, event)
            self.state = evolve(self.state, event)
            self.events.append(event)


def check_refusal(err: FleetError, cmd: c.AgentCommand) -> None:
    """(b) a refusal is a FleetError subclass whose sentence says what it is about."""
    assert type(err) is not FleetError, "refuse with a specific subclass"
    assert err.code != FleetError.code
    assert str(err) and str(err) == err.message
    if isinstance(err, InvalidName):
        # A bad user or agent name is about that value, not the agent.
        assert repr(err.value) in str(err) and err.why in str(err)
        assert isinstance(cmd, c.Create | c.Attach)
    else:
        assert AGENT in str(err), f"{str(err)!r} does not name the agent"
    if isinstance(err, InvalidTransition):
        # NEW is internal (before agent.created): no sentence may ask a person for it.
        assert "NEW" not in (err.current, *err.needs.replace(" or ", ", ").split(", "))


def check_meta(event: e.AgentEvent, cmd: c.AgentCommand, now: datetime) -> None:
    assert event.agent_id == AGENT
    assert event.at == now
    assert event.causation == cmd.id
    assert event.actor == (cmd.by or "user")


def check_transition(state: AgentState, event: e.AgentEvent) -> None:
    """(a) each recorded change starts where the state is and is allowed by its table."""
    if isinstance(event, e.LifecycleChanged):
        assert event.frm is state.lifecycle
        assert event.to in LIFECYCLE[event.frm], f"{event.frm} -> {event.to} is not in LIFECYCLE"
    elif isinstance(event, e.ActivityChanged):
        assert event.frm is state.activity
        assert event.to in ACTIVITY[event.frm], f"{event.frm} -> {event.to} is not in ACTIVITY"
        if event.to is event.frm:
            # A waiting agent's new question: recorded only when the detail changed.
            assert event.detail != state.activity_detail, "an ActivityChanged that changes nothing"


# Commands that move an agent on from each lifecycle. Half the draws come from here, so runs
# reach RUNNING, observe activity and come back from PAUSED, STOPPED and ERROR; the other half
# is any command at all, mostly refused.
L = Lifecycle
OBSERVE, SEND, PAUSE = command_st(c.ObserveActivity), command_st(c.Send), command_st(c.Pause)
ATTACH = struct_st(c.Attach, {**COMMON, "user": st.sampled_from(["ada", "bob"])})
DETACH = struct_st(c.Detach, {**COMMON, "user": st.sampled_from(["ada", "bob"])})
FORWARD = {
    L.SPAWNING: [command_st(c.MarkRunning)],
    L.RUNNING: [OBSERVE, OBSERVE, OBSERVE, SEND, ATTACH, DETACH, PAUSE, PAUSE],
    L.PAUSED: [command_st(c.Resume), ATTACH, DETACH],
    L.STOPPING: [command_st(c.MarkStopped)],
    L.STOPPED: [command_st(c.Restart), command_st(c.Restart), command_st(c.Remove)],
    L.ERROR: [command_st(c.Restart), command_st(c.Stop)],
}
FORWARD_ST = {lifecycle: st.one_of(options) for lifecycle, options in FORWARD.items()}


@settings(max_examples=300)
@given(st.data())
def test_random_commands_record_only_allowed_transitions(data: st.DataObject) -> None:
    run = Run()
    run.apply(CREATE)
    assert [type(ev) for ev in run.events] == [e.AgentCreated, e.LifecycleChanged]
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        forward = FORWARD_ST.get(run.state.lifecycle, commands_st)
        run.apply(data.draw(st.one_of(forward, commands_st)))
    # (c) replaying the log from nothing gives the state reached step by step
    assert fold(run.events) == run.state
    assert fold(run.events, INITIAL) == fold(run.events, initial(AGENT))
    assert run.state.events == len(run.events)


@settings(max_examples=100)
@given(st.lists(commands_st.filter(lambda cmd: not isinstance(cmd, c.Create)), max_size=10))
def test_every_command_to_an_agent_never_created_is_unknown_agent(
    cmds: list[c.AgentCommand],
) -> None:
    run = Run()
    for cmd in cmds:
        run.apply(cmd)
    assert run.events == []
    assert all(type(err) is UnknownAgent for err in run.refused)
    assert len(run.refused) == len(cmds)


@settings(max_examples=300)
@given(st.lists(events_st, max_size=30))
def test_evolve_never_raises_on_any_event_sequence(events: list[e.AgentEvent]) -> None:
    """(d) nonsense histories too: the audit judges a history, the fold only applies it."""
    state = fold(events)
    assert isinstance(state, AgentState)
    assert state.events == len(events)
    if events:
        assert state.updated_at == events[-1].at


@settings(max_examples=100)
@given(st.lists(events_st, max_size=20), st.lists(events_st, max_size=20))
def test_fold_of_a_log_equals_fold_of_its_tail_over_a_snapshot(
    head: list[e.AgentEvent], tail: list[e.AgentEvent]
) -> None:
    """What snapshots rely on: state after head, then the tail, is the state of the whole log."""
    assert fold(tail, fold(head)) == fold(head + tail)

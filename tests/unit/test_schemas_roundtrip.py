"""Every event, command, the agent state and the snapshot survive msgspec JSON unchanged."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.agent import AgentState
from schemas.chain import Snapshot
from schemas.commands import COMMAND_TYPES, AgentCommand
from schemas.events import EVENT_TYPES, TAGS, AgentEvent, LifecycleChanged
from tests.unit.test_schemas_strategies import command_st, struct_st

ENCODE = msgspec.json.encode


def test_tags_are_unique_dotted_names() -> None:
    assert len(TAGS) == len(EVENT_TYPES), "two event classes share a tag"
    for tag, cls in TAGS.items():
        assert tag.islower() and " " not in tag, tag
        assert tag != cls.__name__, "tags are explicit strings, never class names"


def test_command_tags_are_unique() -> None:
    tags = [cls.__struct_config__.tag for cls in COMMAND_TYPES]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_event_round_trips_through_the_union(cls: type, data: st.DataObject) -> None:
    event = data.draw(struct_st(cls))
    raw = ENCODE(event)
    back = msgspec.json.decode(raw, type=AgentEvent)
    assert type(back) is cls
    assert back == event
    assert ENCODE(back) == raw, "re-encoding a decoded event gives the same bytes"


@pytest.mark.parametrize("cls", COMMAND_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_command_round_trips_through_the_union(cls: type, data: st.DataObject) -> None:
    cmd = data.draw(command_st(cls))
    raw = ENCODE(cmd)
    back = msgspec.json.decode(raw, type=AgentCommand)
    assert type(back) is cls
    assert back == cmd


@settings(max_examples=100)
@given(struct_st(AgentState))
def test_agent_state_round_trips(state: AgentState) -> None:
    assert msgspec.json.decode(ENCODE(state), type=AgentState) == state


@settings(max_examples=100)
@given(struct_st(Snapshot))
def test_snapshot_round_trips(snapshot: Snapshot) -> None:
    assert msgspec.json.decode(ENCODE(snapshot), type=Snapshot) == snapshot


def test_lifecycle_changed_says_from_on_the_wire() -> None:
    """`frm` is a Python name only: the wire and the golden files say "from"."""
    names = {f.name: f.encode_name for f in msgspec.structs.fields(LifecycleChanged)}
    assert names["frm"] == "from"


def test_a_command_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.json.decode(b'{"type": "pause", "colour": "red"}', type=AgentCommand)

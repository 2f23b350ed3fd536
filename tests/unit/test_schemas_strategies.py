"""Hypothesis strategies for every event, command and state Struct, built from their type hints.

The strategies are derived from the classes, so a new event or command type is covered without
touching this file; the tests below fail if a type uses a field type the builder cannot make.
Other test modules import `commands_st`, `events_st`, `struct_st` from here.
"""

from __future__ import annotations

import enum
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.agent import AgentState
from schemas.chain import Snapshot
from schemas.commands import COMMAND_TYPES, Attach, Create, Detach
from schemas.errors import FleetError
from schemas.events import EVENT_TYPES

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
TOKENS = st.text(TOKEN_CHARS, min_size=1, max_size=12)
TIMEZONES = st.just(UTC) | st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60)
)
DATETIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=TIMEZONES
)

Overrides = dict[str, st.SearchStrategy[Any]]


def value_st(tp: Any, overrides: Overrides | None = None) -> st.SearchStrategy[Any]:
    """A strategy for values of type `tp` that msgspec can encode to JSON and read back equal."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        return st.text(max_size=20)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return INT64
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is datetime:
        return DATETIMES
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return struct_st(tp, overrides)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([value_st(a, overrides) for a in args])
    if tp is type(None):
        return st.none()
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(value_st(args[0], overrides), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(value_st(args[0]), value_st(args[1], overrides), max_size=4)
    raise TypeError(f"no strategy for field type {tp!r}: teach value_st about it")


def struct_st(cls: type[msgspec.Struct], overrides: Overrides | None = None) -> Any:
    """Every field of `cls` drawn at random; `overrides` replace the strategy of named fields."""
    overrides = overrides or {}
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: overrides[f.name] if f.name in overrides else value_st(hints[f.name], overrides)
        for f in msgspec.structs.fields(cls)
    }
    return st.builds(cls, **fields)


# Commands with sensible fields for driving the decider: few users and names, so that an
# attach is later detached, and now and then an unsafe token, which the command refuses to be
# made with (schemas.validation), so it is drawn again.
USERS = st.sampled_from(["ada", "bob", "carol"]) | st.sampled_from(["", "a b", "x.y", "*"])
COMMAND_OVERRIDES: dict[type, Overrides] = {
    Create: {"name": st.just("a1") | st.sampled_from(["b2", "a.1", ""])},
    Attach: {"user": USERS},
    Detach: {"user": USERS},
}
COMMON: Overrides = {
    "id": st.sampled_from(["", "c1", "c2"]) | TOKENS,
    "by": st.sampled_from(["", "user:ada", "service:health", "agent"]),
    "text": st.text(max_size=10),
    "reason": st.text(max_size=10),
    "detail": st.sampled_from(["", "Proceed? (y/n)", "Please run /login"]),
    "repo": st.sampled_from(["", "/srv/repo"]),
    "base_ref": st.sampled_from(["HEAD", "main", "v1.0"]),
    "template": TOKENS,
    "capabilities": st.lists(TOKENS, max_size=3).map(tuple),
    "options": st.dictionaries(TOKENS, st.text(TOKEN_CHARS + " :/", max_size=10), max_size=3),
    "window": st.sampled_from(["agent", "services"]),
    "keys": st.lists(st.sampled_from(["C-c", "Enter", "Escape"]), max_size=3).map(tuple),
    "label": st.text(TOKEN_CHARS + " #.", max_size=20),
    "auto": st.sampled_from(["", "stop", "interval"]),
    "service": TOKENS,
    "rung": TOKENS,
}


def _made(cls: type[msgspec.Struct], fields: dict[str, Any]) -> Any:
    try:
        return cls(**fields)
    except FleetError:  # a field the command refuses (schemas.validation)
        return None


def command_st(cls: type[msgspec.Struct]) -> Any:
    overrides = {**COMMON, **COMMAND_OVERRIDES.get(cls, {})}
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: overrides[f.name] if f.name in overrides else value_st(hints[f.name], overrides)
        for f in msgspec.structs.fields(cls)
    }
    made = st.fixed_dictionaries(fields).map(lambda kw: _made(cls, kw))
    return made.filter(lambda cmd: cmd is not None)


commands_st = st.one_of([command_st(cls) for cls in COMMAND_TYPES])
events_st = st.one_of([struct_st(cls) for cls in EVENT_TYPES])


@pytest.mark.parametrize("cls", [*EVENT_TYPES, *COMMAND_TYPES, AgentState, Snapshot])
@settings(max_examples=5)
@given(data=st.data())
def test_every_struct_has_a_strategy(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    """A type with a field type the builder does not know fails here, by name."""
    made = command_st(cls) if cls in COMMAND_TYPES else struct_st(cls)
    assert type(data.draw(made)) is cls


@given(commands_st)
def test_command_strategy_draws_every_field_type(cmd: msgspec.Struct) -> None:
    assert type(cmd) in COMMAND_TYPES


def test_value_st_refuses_an_unknown_type() -> None:
    with pytest.raises(TypeError, match="no strategy"):
        value_st(complex)

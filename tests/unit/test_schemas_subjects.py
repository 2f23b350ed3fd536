"""Subject, stream and bucket names from checked tokens; unsafe ones refused with a sentence."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import subjects
from schemas.errors import FleetError, InvalidName
from tests.unit.test_schemas_strategies import TOKENS

TOKEN_RULE = "use 1 to 64 letters, digits, '-' or '_' (no dots, spaces, '*' or '>')"
BAD_TOKENS = ["", "a.b", "a b", "*", ">", "a>", "x" * 65, "../x", "a\nb", "a\n", "a\tb", "é"]
PER_AGENT: list[Callable[[str], str]] = [
    subjects.events,
    subjects.command,
    subjects.health,
    lambda agent_id: subjects.mail(agent_id, "normal"),
]


def test_subjects_of_one_agent() -> None:
    assert subjects.events("a1") == "fleet.evt.a1"
    assert subjects.command("a1") == "fleet.cmd.a1"
    assert subjects.health("a1") == "fleet.health.a1"
    assert subjects.mail("a1", "high") == "fleet.mail.a1.high"
    assert subjects.control("spawn") == "fleet.ctl.spawn"
    assert subjects.notify("critical") == "fleet.notify.critical"
    assert subjects.ALL_EVENTS == "fleet.evt.>"
    assert subjects.ALL_MAIL == "fleet.mail.>"


def test_token_accepts_64_characters_and_every_allowed_character() -> None:
    assert subjects.events("x" * 64) == "fleet.evt." + "x" * 64
    assert subjects.token("Az09-_") == "Az09-_"


@pytest.mark.parametrize("value", BAD_TOKENS, ids=repr)
@pytest.mark.parametrize("build", PER_AGENT, ids=["events", "command", "health", "mail"])
def test_unsafe_agent_id_is_refused_with_the_rule(build: Callable[[str], str], value: str) -> None:
    with pytest.raises(InvalidName) as info:
        build(value)
    err = info.value
    assert (err.what, err.value, err.code) == ("agent id", value, "invalid_name")
    assert str(err).startswith("invalid agent id ")
    assert str(err).endswith(": " + TOKEN_RULE)


def test_long_value_is_shortened_in_the_sentence() -> None:
    with pytest.raises(InvalidName) as info:
        subjects.events("x" * 300)
    assert len(str(info.value)) < 160
    assert info.value.value == "x" * 300  # the attribute keeps all of it


@pytest.mark.parametrize("value", [None, 5, b"a1", ["a1"]], ids=repr)
def test_non_string_agent_id_is_refused(value: Any) -> None:
    with pytest.raises(InvalidName, match="expected a string, got " + type(value).__name__):
        subjects.events(value)


def test_control_verb_is_checked_by_name() -> None:
    with pytest.raises(InvalidName, match=r"^invalid control verb 'a\.b': use 1 to 64"):
        subjects.control("a.b")


@given(TOKENS)
def test_agent_id_comes_back_from_its_event_subject(agent_id: str) -> None:
    subject = subjects.events(agent_id)
    assert re.fullmatch(r"fleet\.evt\.[^.*> ]+", subject)
    assert subjects.agent_from_events(subject) == agent_id


@given(st.text(max_size=70))
def test_any_text_is_a_token_or_refused_with_invalid_name(value: str) -> None:
    try:
        subject = subjects.events(value)
    except InvalidName:
        return
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value)
    assert subject.count(".") == 2


@pytest.mark.parametrize(
    "subject", ["fleet.cmd.a1", "fleet.evt.", "fleet.evt.a.b", "fleet.evt.*", "evt.a1"]
)
def test_agent_from_events_refuses_other_subjects(subject: str) -> None:
    with pytest.raises(InvalidName):
        subjects.agent_from_events(subject)


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("builds", "fleet.topic.builds"),
        ("builds.main", "fleet.topic.builds.main"),
        ("builds.*", "fleet.topic.builds.*"),
        ("*.failed", "fleet.topic.*.failed"),
        ("builds.>", "fleet.topic.builds.>"),
        (">", "fleet.topic.>"),
    ],
)
def test_topic_accepts_wildcards(name: str, subject: str) -> None:
    assert subjects.topic(name) == subject


@pytest.mark.parametrize(
    "name", ["", "a.>.b", ">.a", "a..b", "a.", ".a", "a b", "a>", "a*", "x." * 101, "a.\n"]
)
def test_topic_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        subjects.topic(name)
    assert "topic" in str(info.value)


@pytest.mark.parametrize("name", [None, 5])
def test_topic_refuses_non_strings(name: Any) -> None:
    with pytest.raises(InvalidName, match="dotted tokens"):
        subjects.topic(name)


@pytest.mark.parametrize("priority", subjects.PRIORITIES)
def test_every_priority_names_a_mail_subject(priority: str) -> None:
    assert subjects.mail("a1", priority) == f"fleet.mail.a1.{priority}"


def test_priorities_and_severities() -> None:
    assert subjects.PRIORITIES == ("critical", "high", "normal", "low")
    assert subjects.SEVERITIES == ("critical", "warning", "info")
    for severity in subjects.SEVERITIES:
        assert subjects.notify(severity) == f"fleet.notify.{severity}"


@pytest.mark.parametrize("priority", ["urgent", "HIGH", "", "*", "high.x"])
def test_unknown_priority_is_refused_with_the_choices(priority: str) -> None:
    with pytest.raises(InvalidName) as info:
        subjects.mail("a1", priority)
    assert str(info.value) == (
        f"invalid priority {priority!r}: expected one of critical, high, normal, low"
    )


@pytest.mark.parametrize("severity", ["error", "Critical", "", ">"])
def test_unknown_severity_is_refused_with_the_choices(severity: str) -> None:
    with pytest.raises(InvalidName, match=r"expected one of critical, warning, info$"):
        subjects.notify(severity)


def test_stream_and_bucket_names_are_safe_tokens() -> None:
    for name in (subjects.EVENTS_STREAM, subjects.MAIL_STREAM, *subjects.BUCKETS):
        assert subjects.token(name, "stream or bucket name") == name
    assert len(set(subjects.BUCKETS)) == len(subjects.BUCKETS)


def test_invalid_name_is_a_fleet_error() -> None:
    assert issubclass(InvalidName, FleetError)

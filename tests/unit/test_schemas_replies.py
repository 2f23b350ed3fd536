"""The one reply shape, and every way a request can be wrong becoming one coded sentence."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import replies
from schemas.commands import AgentCommand, Attach, Pause
from schemas.errors import BadRequest, FleetError, InvalidTransition, PayloadTooLarge, RemoteError
from schemas.wire import AgentsReply

REQUEST_CODES = {"invalid_json", "not_an_object", "unknown_type", "missing_type", "invalid_field"}
CASES = [
    (b"{", "invalid_json", "invalid request: not valid JSON ("),
    (b"", "invalid_json", "invalid request: not valid JSON ("),
    (b"pause", "invalid_json", "invalid request: not valid JSON ("),
    (b"[1, 2]", "not_an_object", "invalid request: expected a JSON object, got `array`"),
    (b'"pause"', "not_an_object", "invalid request: expected a JSON object, got `str`"),
    (b"null", "not_an_object", "invalid request: expected a JSON object, got `null`"),
    (b'{"type": "dance"}', "unknown_type", "invalid request: unknown type 'dance'"),
    (b"{}", "missing_type", "invalid request: missing field `type`"),
    (b'{"id": "c1"}', "missing_type", "invalid request: missing field `type`"),
    (b'{"type": "attach"}', "invalid_field", "invalid request: Object missing required field"),
    (b'{"type": "pause", "x": 1}', "invalid_field", "invalid request: Object contains unknown"),
    (b'{"type": "send", "enter": "yes"}', "invalid_field", "invalid request: Expected `bool`"),
    (b'{"type": 5}', "invalid_field", "invalid request: Expected `str`"),
]


@pytest.mark.parametrize(("raw", "code", "start"), CASES, ids=[c[0].decode()[:20] for c in CASES])
def test_bad_request_gets_a_code_and_a_sentence(raw: bytes, code: str, start: str) -> None:
    with pytest.raises(BadRequest) as info:
        replies.decode_request(raw, AgentCommand)
    err = info.value
    assert err.code == code
    assert err.message.startswith(start), err.message
    assert isinstance(err.__cause__, msgspec.MsgspecError), "raised from msgspec's error"


def test_field_errors_say_where() -> None:
    with pytest.raises(BadRequest) as info:
        replies.decode_request(b'{"type": "create", "name": "a1", "options": [1]}', AgentCommand)
    assert info.value.code == "invalid_field"
    assert "`$.options`" in info.value.message


def test_the_sentence_names_what_was_read() -> None:
    with pytest.raises(BadRequest, match=r"^invalid pause command: "):
        replies.decode_request(b"[]", Pause, what="pause command")


def test_payload_too_large() -> None:
    raw = b'{"type": "send", "text": "' + b"x" * replies.MAX_REQUEST_BYTES + b'"}'
    with pytest.raises(PayloadTooLarge) as info:
        replies.decode_request(raw, AgentCommand)
    assert info.value.code == "payload_too_large"
    assert str(info.value) == (
        f"request is {len(raw)} bytes, more than the limit of {replies.MAX_REQUEST_BYTES} bytes"
    )


def test_a_request_at_the_limit_is_read() -> None:
    head, tail = b'{"type": "send", "text": "', b'"}'
    text = b"x" * (replies.MAX_REQUEST_BYTES - len(head) - len(tail))
    cmd = replies.decode_request(head + text + tail, AgentCommand)
    assert cmd.text == text.decode()  # type: ignore[union-attr]


def test_a_good_request_decodes() -> None:
    cmd = replies.decode_request(b'{"type": "attach", "user": "ada", "id": "c1"}', AgentCommand)
    assert cmd == Attach(id="c1", user="ada")


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_a_fleet_error(raw: bytes) -> None:
    try:
        replies.decode_request(raw, AgentCommand)
    except FleetError as err:
        assert err.code in REQUEST_CODES
        assert err.message.startswith("invalid request: ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(["type", "id", "user", "text", "x"]), json_values))
def test_any_json_object_decodes_or_raises_bad_request(obj: dict[str, object]) -> None:
    try:
        replies.decode_request(msgspec.json.encode(obj), AgentCommand)
    except BadRequest as err:
        assert err.code != "invalid_json"
        assert err.code != "not_an_object"


def test_ok_reply_shape() -> None:
    assert msgspec.json.decode(replies.ok()) == {"ok": True}
    reply = msgspec.json.decode(replies.ok(agent="a1", events=2))
    assert reply == {"ok": True, "agent": "a1", "events": 2}
    assert not replies.is_error(reply)


def test_error_reply_shape() -> None:
    err = InvalidTransition("a1", "pause", "STOPPED", "RUNNING")
    reply = msgspec.json.decode(replies.error(err))
    assert set(reply) == {"ok", "error"}
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_transition"
    assert reply["error"]["message"] == "cannot pause agent a1: it is STOPPED, not RUNNING"
    assert set(reply["error"]) <= {"code", "message", "error_id"}
    assert replies.is_error(reply)


def test_error_reply_of_a_bad_request_keeps_its_code() -> None:
    with pytest.raises(BadRequest) as info:
        replies.decode_request(b"{}", AgentCommand)
    reply = msgspec.json.decode(replies.error(info.value))
    assert reply["error"]["code"] == "missing_type"


def test_unexpected_reply_points_to_the_log() -> None:
    reply = msgspec.json.decode(replies.unexpected("e-42"))
    assert reply["ok"] is False
    assert reply["error"] == {
        "code": "internal",
        "message": "unexpected error (id e-42; see the fleetd log)",
        "error_id": "e-42",
    }


@pytest.mark.parametrize(
    ("reply", "is_error"),
    [({"ok": True}, False), ({"ok": False}, True), ({}, True), ({"ok": "true"}, True)],
)
def test_is_error(reply: dict[str, object], is_error: bool) -> None:
    assert replies.is_error(reply) is is_error


def test_decode_reply_reads_a_success_as_its_struct() -> None:
    got = replies.decode_reply(b'{"ok": true, "agents": [], "extra": 1}', AgentsReply)
    assert got == AgentsReply(agents=[])


def test_decode_reply_raises_the_error_a_reply_names() -> None:
    err = InvalidTransition("a1", "pause", "STOPPED", "RUNNING")
    with pytest.raises(RemoteError) as info:
        replies.decode_reply(replies.error(err), AgentsReply)
    assert info.value.code == "invalid_transition"
    assert str(info.value) == "cannot pause agent a1: it is STOPPED, not RUNNING"


@pytest.mark.parametrize(
    ("raw", "code", "start"),
    [
        (b"{", "bad_reply", "the reply on x is not a JSON reply object ("),
        (b"[1]", "bad_reply", "the reply on x is not a JSON reply object (Expected `object`"),
        (b'{"ok": false, "error": 5}', "bad_reply", "the reply on x is not a JSON reply object"),
        (b"{}", "error", "the reply on x says it failed"),
        (b'{"ok": "true"}', "error", "the reply on x says it failed"),
        (b'{"ok": false, "error": {"code": "busy"}}', "busy", "the reply on x says it failed"),
        (b'{"ok": true}', "bad_reply", "the reply on x is not the reply expected (Object missing"),
        (b'{"ok": true, "agents": 3}', "bad_reply", "the reply on x is not the reply expected"),
    ],
)
def test_decode_reply_makes_any_other_reply_one_sentence(raw: bytes, code: str, start: str) -> None:
    with pytest.raises(RemoteError) as info:
        replies.decode_reply(raw, AgentsReply, "the reply on x")
    assert info.value.code == code
    assert str(info.value).startswith(start), str(info.value)


@given(st.binary(max_size=100))
def test_decode_reply_of_any_bytes_is_a_reply_or_a_fleet_error(raw: bytes) -> None:
    try:
        replies.decode_reply(raw, replies.Reply)
    except FleetError as err:
        assert err.message

"""The one reply shape: `{"ok": true, ...}` or `{"ok": false, "error": {"code", "message"}}`.

Also the decoding of requests, so every way a request can be wrong becomes a `BadRequest`
with one sentence instead of an exception escaping a handler, and of replies (`decode_reply`),
the one place a caller checks `ok`: an error reply becomes the `RemoteError` it names.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from schemas.errors import BadRequest, FleetError, PayloadTooLarge, RemoteError

MAX_REQUEST_BYTES = 64 * 1024


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str
    error_id: str = ""  # for unexpected errors: the id under which the log has the traceback


class ErrorReply(msgspec.Struct, frozen=True, omit_defaults=False):
    error: ErrorBody
    ok: bool = False


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """A success reply that carries nothing more (a request's own reply Struct adds fields)."""

    ok: bool = True


class _Failure(msgspec.Struct, frozen=True):
    """An error body as a reply may carry it: read leniently, so a responder's odd error
    still reaches the person as a sentence."""

    code: str = "error"
    message: str = ""
    error_id: str = ""


class _Status(msgspec.Struct, frozen=True):
    """The part of every reply that says whether it succeeded (other fields are skipped)."""

    ok: object = None  # anything but `true` is a failure
    error: _Failure | None = None


R = TypeVar("R")

_encoder = msgspec.json.Encoder()
_status_decoder = msgspec.json.Decoder(_Status)


def ok(**data: Any) -> bytes:
    """Encode a success reply; `data` fields sit beside `"ok": true`."""
    return _encoder.encode({"ok": True, **data})


def error(err: FleetError) -> bytes:
    return _encoder.encode(ErrorReply(ErrorBody(err.code, err.message)))


def unexpected(error_id: str) -> bytes:
    body = ErrorBody("internal", f"unexpected error (id {error_id}; see the fleetd log)", error_id)
    return _encoder.encode(ErrorReply(body))


def decode_request(
    data: bytes, type_: Any, what: str = "request", limit: int = MAX_REQUEST_BYTES
) -> Any:
    """Decode `data` as `type_` (a Struct or a union of them); every failure is one sentence."""
    if len(data) > limit:
        raise PayloadTooLarge(what, len(data), limit)
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as e:
        code, sentence = _reword(str(e))
        raise BadRequest(f"invalid {what}: {sentence}", code) from e
    except msgspec.DecodeError as e:
        raise BadRequest(f"invalid {what}: not valid JSON ({e})", "invalid_json") from e


def _reword(msg: str) -> tuple[str, str]:
    """Map msgspec's validation message to an error code and the sentence a person needs."""
    if "at `$.type`" in msg and msg.startswith("Invalid value"):
        head = msg.split(" - ", maxsplit=1)[0]
        return "unknown_type", "unknown type " + head.removeprefix("Invalid value ")
    if msg.startswith("Object missing required field `type`"):
        return "missing_type", "missing field `type` (what to do)"
    if msg.startswith("Expected `object`") and " - at " not in msg:
        return "not_an_object", "expected a JSON object" + msg.removeprefix("Expected `object`")
    return "invalid_field", msg


def decode_reply(data: bytes, kind: type[R], what: str = "the reply") -> R:
    """`data` as `kind` (a reply Struct): an error reply is raised as the `RemoteError` it
    names (its wire code and the responder's sentence), and a reply that is not JSON, not an
    object or not of `kind` is one sentence about `what` (code `bad_reply`)."""
    try:
        status = _status_decoder.decode(data)
    except msgspec.DecodeError as e:  # also a ValidationError: not an object, an odd error body
        raise RemoteError("bad_reply", f"{what} is not a JSON reply object ({e})") from e
    if status.ok is not True:
        failure = status.error or _Failure()
        raise RemoteError(failure.code, failure.message or f"{what} says it failed")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as e:
        raise RemoteError("bad_reply", f"{what} is not the reply expected ({e})") from e


def is_error(reply: dict[str, Any]) -> bool:
    return reply.get("ok") is not True

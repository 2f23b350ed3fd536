"""The one reply shape: `{"ok": true, ...}` or `{"ok": false, "error": {"code", "message"}}`.

Also the decoding of requests, so every way a request can be wrong becomes a `BadRequest`
with one sentence instead of an exception escaping a handler.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.errors import BadRequest, FleetError, PayloadTooLarge

MAX_REQUEST_BYTES = 64 * 1024


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str
    error_id: str = ""  # for unexpected errors: the id under which the log has the traceback


class ErrorReply(msgspec.Struct, frozen=True, omit_defaults=False):
    error: ErrorBody
    ok: bool = False


_encoder = msgspec.json.Encoder()


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
        return "unknown_type", "unknown type " + msg.split(" - ")[0].removeprefix("Invalid value ")
    if msg.startswith("Object missing required field `type`"):
        return "missing_type", "missing field `type` (what to do)"
    if msg.startswith("Expected `object`") and " - at " not in msg:
        return "not_an_object", "expected a JSON object" + msg.removeprefix("Expected `object`")
    return "invalid_field", msg


def is_error(reply: dict[str, Any]) -> bool:
    return reply.get("ok") is not True

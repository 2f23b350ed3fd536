"""What each request field of `/openapi.json` accepts: schemas/validation.py's rules as JSON Schema.

msgspec writes a field's type; what a request's `__post_init__` checks besides (an id's
characters, one line without control characters, an absolute path, a git ref, sizes) is written
here, so a request the document calls valid is one the gateway and the actors take, and a tool
that reads the document (schemathesis) sends nothing they must refuse. A pattern is searched,
so each is anchored; every one is also a Python regex with the same meaning. When a rule in
schemas/validation.py changes, its schema here changes with it (tests/fleet/
test_gateway_schemathesis.py finds the difference: a valid request refused).
"""

from __future__ import annotations

from typing import Any

from schemas import commands as c
from schemas import mail
from schemas import validation as v

Schema = dict[str, Any]

# `schemas.subjects.token`: an id, a name, a subject token (what every path parameter is).
ID: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
ID_OR_EMPTY: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_-]{0,64}$"}
_C = r"[^/\x00-\x1f\x7f]"  # a path's character within one component
_C_NODOT = r"[^/.\x00-\x1f\x7f]"
# One component of a path that is not `..`: empty, `.`, or anything else.
_COMPONENT = rf"(?:\.?|{_C_NODOT}{_C}*|\.{_C_NODOT}{_C}*|\.\.{_C}+)"


def line(limit: int) -> Schema:
    """`validation.line`: one line, no control character, at most `limit` characters."""
    return {"type": "string", "maxLength": limit, "pattern": r"^[^\x00-\x1f\x7f]*$"}


def text(limit: int) -> Schema:
    """`validation.text`: free text (newlines allowed) without NUL."""
    return {"type": "string", "maxLength": limit, "pattern": r"^[^\x00]*$"}


def one_of_names(limit: int, item: Schema) -> Schema:
    return {"type": "array", "maxItems": limit, "items": item}


ABSOLUTE_PATH: Schema = {
    "type": "string",
    "maxLength": v.MAX_PATH,
    "pattern": rf"^/{_COMPONENT}(?:/{_COMPONENT})*$",
    "description": "an absolute path on the gateway's host, without a `..` component",
}
# `validation.git_ref`: what `git check-ref-format` takes, and no leading `-`.
GIT_REF: Schema = {
    "type": "string",
    "maxLength": v.MAX_LABEL,
    "pattern": r"^(?![-/.])(?!.*(?:\.\.|@\{|//|/\.|\.lock/|\.lock$|[/.]$))"
    r"[^\x00-\x20\x7f~^:?*\[\\]+$",
}
TYPED: Schema = {
    "type": "string",
    "pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$",
    "description": "printable text, tab and newline (keys such as Escape go in keys)",
}
KEY: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9-]{0,31}$"}
ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]{0,127}$"
SENDER = line(128)  # `validation.sender`: a request's id (`by` is never taken over REST)

# component name -> field -> what it takes (besides its type, which msgspec wrote)
_REQUESTS: dict[str, dict[str, Schema]] = {
    "SpawnRequest": {
        "repo": ABSOLUTE_PATH,
        "name": ID_OR_EMPTY,
        "template": ID,
        "base_ref": GIT_REF,
        "capabilities": one_of_names(v.MAX_LIST, ID),
        "options": {
            "type": "object",
            "maxProperties": v.MAX_LIST,
            "propertyNames": ID,
            "additionalProperties": line(v.MAX_TEXT_LINE),
        },
        "command": text(v.MAX_COMMAND),
        "env": {
            "type": "object",
            "maxProperties": v.MAX_ENV_VARS,
            "propertyNames": {"pattern": ENV_NAME},
            "additionalProperties": text(v.MAX_ENV_VALUE),
        },
        "id": SENDER,
    },
    "Send": {"text": TYPED, "keys": one_of_names(v.MAX_LIST, KEY)},
    "Attach": {"user": ID},
    "Detach": {"user": ID},
    "Checkpoint": {"label": line(v.MAX_LABEL), "auto": ID_OR_EMPTY},
    "RestartService": {"service": ID},
    "Escalate": {"rung": ID},
    "ReportHealth": {"service": ID},
    "TakeCheckpoint": {"label": line(v.MAX_LABEL)},
    "TokenRequest": {"role": {"enum": ["viewer", "operator", "admin"]}, "name": ID_OR_EMPTY},
    "SendMail": {
        # not only whitespace (Python's reading of \s, as the gateway's `strip`)
        "body": {"type": "string", "pattern": r"\S"},
        "priority": {"enum": ["critical", "high", "normal", "low"]},
        "ttl_s": {"type": "number", "minimum": 0, "maximum": mail.MAX_TTL_S},
    },
}
# ... and every command's `id` is a sender's id
FIELDS: dict[str, dict[str, Schema]] = {
    **_REQUESTS,
    **{cmd.__name__: {**_REQUESTS.get(cmd.__name__, {}), "id": SENDER} for cmd in c.COMMAND_TYPES},
}


def constrain(components: dict[str, Schema]) -> None:
    """Add each field's rule to its component (in place), keeping msgspec's default and title."""
    for name, fields in FIELDS.items():
        if name not in components:  # a command that is not a REST body (`create`)
            continue
        properties = components[name]["properties"]
        for field, rule in fields.items():
            properties[field] = {**properties[field], **rule}


def rest_body(component: Schema, verb: str | None) -> Schema:
    """A component as a REST body: `by` refused (the sender is the token); for a command,
    `type` may be left out (the path says it) and is the path's verb when given."""
    properties = dict(component["properties"])
    required = list(component.get("required", []))
    if "by" in properties:
        properties["by"] = False
    if verb is not None:
        properties["type"] = {"enum": [verb]}
        required = [r for r in required if r != "type"]
    return {**component, "properties": properties, "required": required}


def query(name: str, schema: Schema, what: str) -> dict[str, Any]:
    """A route's `?name=` parameter as the document lists it."""
    return {"name": name, "schema": schema, "description": what}


FLAG: Schema = {"enum": ["", "0", "1", "false", "true", "no", "yes"]}
WHOLE: Schema = {"type": "integer"}

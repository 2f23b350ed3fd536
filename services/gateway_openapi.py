"""`/openapi.json`: an OpenAPI 3.1 document written from the route table and the msgspec types.

Schemas come from `msgspec.json.schema_components`, so the document cannot drift from what the
gateway and the actors decode. A command's body is the command without `type` (the path says
it); the schema still lists `type` because the same component describes the NATS form.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import msgspec

from schemas.agent import CheckpointRef
from schemas.control import AgentView
from schemas.events import AgentEvent
from schemas.health import Observation
from schemas.mail import InboxItem
from schemas.replies import ErrorReply

if TYPE_CHECKING:
    from services.gateway_api import Route


class AgentReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: AgentView


class ListReply(msgspec.Struct, frozen=True):
    ok: bool
    agents: list[AgentView]


class StoredEvent(msgspec.Struct, frozen=True):
    seq: int
    event: AgentEvent


class EventsReply(msgspec.Struct, frozen=True):
    ok: bool
    events: list[StoredEvent]


class OutputReply(msgspec.Struct, frozen=True):
    ok: bool
    output: str


class TokenReply(msgspec.Struct, frozen=True):
    ok: bool
    token: str
    role: str
    name: str


class TicketReply(msgspec.Struct, frozen=True):
    ok: bool
    ticket: str  # opens one WebSocket once, as `?ticket=`
    expires_in_s: float
    role: str
    name: str


class Reply(msgspec.Struct, frozen=True):
    ok: bool


class CheckpointsReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: str
    checkpoints: list[CheckpointRef]


class CheckpointReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: AgentView
    checkpoint: int
    commit: str


class InboxReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: str
    mail: list[InboxItem]


class SentReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: str
    seq: int  # the message's sequence in FLEET_MAIL
    priority: str
    from_: str = msgspec.field(name="from")


class ServiceHealthView(msgspec.Struct, frozen=True):
    state: str
    pid: int | None
    healthy: bool | None
    checks: dict[str, bool]


class HealthReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: str
    node: str
    lifecycle: str
    services: dict[str, ServiceHealthView]
    recovery: list[dict[str, Any]]
    history: list[Observation]


class SamplesReply(msgspec.Struct, frozen=True):
    ok: bool
    samples: dict[str, Observation]  # agent id -> its latest sample


_REPLIES = (
    AgentReply,
    ListReply,
    EventsReply,
    OutputReply,
    TokenReply,
    TicketReply,
    Reply,
    ErrorReply,
    CheckpointsReply,
    CheckpointReply,
    InboxReply,
    SentReply,
    HealthReply,
    SamplesReply,
)
_REF = "#/components/schemas/{name}"
_ROLE_NOTE = {
    "public": "No token needed.",
    "viewer": "Needs a viewer token (or operator, admin).",
    "operator": "Needs an operator token (or admin).",
    "admin": "Needs an admin token.",
}


def _ref(type_: Any) -> dict[str, str]:
    return {"$ref": _REF.format(name=type_.__name__ if isinstance(type_, type) else type_)}


@functools.cache
def _document(routes: tuple[Route, ...]) -> bytes:
    bodies = [r.body for r in routes if r.body is not None]
    (_, *_refs), components = msgspec.json.schema_components(
        [*_REPLIES, *bodies], ref_template=_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetd gateway",
            "version": "1",
            "description": "REST over fleetd's NATS commands. Errors are "
            '`{"ok": false, "error": {"code", "message"}}` with a 4xx (a refused '
            "request) or a 500 (a bug, with an error_id in the log).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "ticket": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "ticket",
                    "description": "WebSockets only: a single-use ticket from POST "
                    "/api/tickets (a token is never accepted in the URL)",
                },
            },
        },
        "security": [{"bearer": []}],
    }
    return msgspec.json.encode(doc)


def _operation(route: Route) -> dict[str, Any]:
    needed = getattr(route.handler, "fleet_role", "viewer")
    op: dict[str, Any] = {
        "summary": route.summary,
        "description": _ROLE_NOTE[needed],
        "operationId": f"{route.method.lower()}_{route.handler.__name__}",
        "responses": {
            "200": {
                "description": "ok",
                "content": {"application/json": {"schema": _ref(route.reply)}},
            },
            "default": {
                "description": "an error",
                "content": {"application/json": {"schema": _ref(ErrorReply)}},
            },
        },
    }
    if needed == "public":
        op["security"] = []
    elif getattr(route.handler, "fleet_websocket", False):
        op["security"] = [{"bearer": []}, {"ticket": []}]
    params = [seg[1:-1] for seg in route.path.split("/") if seg.startswith("{")]
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": ID_SCHEMA} for p in params
        ]
    if route.body is not None:
        schema: dict[str, Any] = _ref(route.body)
        if "by" in getattr(route.body, "__struct_fields__", ()):
            # The same component describes the NATS form, where `by` names the sender; over
            # REST the sender is the token, and a body with `by` is refused.
            schema = {**schema, "properties": {"by": False}}
        op["requestBody"] = {"content": {"application/json": {"schema": schema}}}
    return op


# Every path parameter is an id: one NATS subject token (schemas/subjects.py `token`).
ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}


def document(routes: list[Route]) -> bytes:
    return _document(tuple(routes))

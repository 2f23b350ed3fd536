"""`/openapi.json`: an OpenAPI 3.1 document written from the route table and the msgspec types.

Schemas come from `msgspec.json.schema_components`, so the document cannot drift from what the
gateway and the actors decode. A command's body is the command without `type` (the path says
it); the schema still lists `type` because the same component describes the NATS form.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from aiohttp import web

import services.gateway.openapi_fields as fields
from schemas.agent import CheckpointRef
from schemas.events import AgentEvent
from schemas.health import Observation
from schemas.mail import InboxItem
from schemas.replies import MAX_REQUEST_BYTES, ErrorReply, Reply
from schemas.wire import AgentReply, AgentsReply, CheckpointReply, OutputReply, ProbesReply
from services.gateway.keys import role, role_of
from services.gateway.routing import Route

# Every route of the app, set by the app factory (`app.py`) for the document to read.
ROUTES = web.AppKey("routes", tuple)


class StoredEvent(msgspec.Struct, frozen=True):
    seq: int
    event: AgentEvent


class EventsReply(msgspec.Struct, frozen=True):
    ok: bool
    events: list[StoredEvent]


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


class CheckpointsReply(msgspec.Struct, frozen=True):
    ok: bool
    agent: str
    checkpoints: list[CheckpointRef]


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
    AgentsReply,
    EventsReply,
    OutputReply,
    ProbesReply,
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
    fields.constrain(components)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetd gateway",
            "version": "1",
            "description": "REST over fleetd's NATS commands. Errors are "
            '`{"ok": false, "error": {"code", "message"}}` with a 4xx (a refused '
            "request, its sentence says why) or a 5xx: 500 is a bug (its error_id names the "
            "traceback in the gateway's log), 502 a program fleetd drives that failed (git, "
            "tmux: its sentence says how), 503 and 504 a part of the fleet that is not there, "
            "has no room, or did not answer in time. Each error code has one status "
            "(services/gateway/httpstatus.py).",
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


# What each error status means; every one carries an ErrorReply.
ERROR_STATUSES = {
    400: "refused: the request is not one the gateway or the agent takes (the sentence says why)",
    401: "no token, or one the gateway does not know",
    403: "the token's role is too small for this route",
    404: "no such agent (or checkpoint, service, template, window, repository, ref, program)",
    409: "the agent's state does not allow it now, or it exists already",
    413: f"the request body is over {MAX_REQUEST_BYTES // 1024} KiB",
    429: "too many (agents, tickets, messages): the sentence says when to try again",
    500: "a bug (error_id names the traceback in the gateway's log), or fleetd misconfigured",
    502: "a program or peer fleetd drives (git, tmux, an agent) failed: its sentence says how",
    503: "a part of the fleet is not there, busy or full: nothing was done, try again",
    504: "no reply in time: it may still finish",
}


def _statuses(route: Route, needed: str, params: list[str]) -> list[int]:
    """The statuses the route answers with besides its success."""
    found = {500, *route.errors}
    if needed != "public":
        found.add(401)
    if needed in ("operator", "admin"):
        found.add(403)
    if params or route.body is not None or route.query:
        found.add(400)
    if "agent" in params:
        found.add(404)
    if route.body is not None:
        found.add(413)
    return sorted(found)


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    needed = role_of(route.handler)
    params = [seg[1:-1] for seg in route.path.split("/") if seg.startswith("{")]
    success: dict[str, Any] = {"description": "ok"}
    if route.content == "application/json":
        success["content"] = {route.content: {"schema": _ref(route.reply)}}
    elif route.content:
        success["content"] = {route.content: {"schema": {"type": "string"}}}
    responses = {str(route.status): success}
    for status in _statuses(route, needed, params):
        responses[str(status)] = {
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": _ref(ErrorReply)}},
        }
    op: dict[str, Any] = {
        "summary": route.summary,
        "description": _ROLE_NOTE[needed],
        "operationId": f"{route.method.lower()}_{route.handler.__name__}",
        "responses": responses,
    }
    if needed == "public":
        op["security"] = []
    elif getattr(route.handler, "fleet_websocket", False):
        op["security"] = [{"bearer": []}, {"ticket": []}]
    parameters = [{"name": p, "in": "path", "required": True, "schema": ID_SCHEMA} for p in params]
    parameters += [{"in": "query", "required": False, **q} for q in route.query]
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        name = route.body.__name__
        verb = name_of_verb(route)
        schema = fields.rest_body(components[name], verb)
        required = bool(schema["required"]) or route.body_required
        op["requestBody"] = {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    return op


def name_of_verb(route: Route) -> str | None:
    """The command verb a route sends (`POST /api/agents/{agent}/<verb>`), else None."""
    tag = getattr(route.body, "__struct_config__", None)
    return str(tag.tag) if tag is not None and isinstance(tag.tag, str) else None


# Every path parameter is an id: one NATS subject token (schemas/subjects.py `token`).
ID_SCHEMA = fields.ID


def document(routes: list[Route]) -> bytes:
    return _document(tuple(routes))


@role("public")
async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_document(request.app[ROUTES]), content_type="application/json")


def doc_routes() -> list[Route]:
    return [Route("GET", "/openapi.json", openapi, "this document")]

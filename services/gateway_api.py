"""The gateway's routes: REST that mirrors the bus, one table that also writes `/openapi.json`.

Each command of `schemas.commands` (but `create`, which the supervisor sends) is
`POST /api/agents/{id}/<type>` with the command's other fields as the JSON body; the reply is
the actor's reply as is, with the HTTP status its outcome maps to. `GET /api/agents` is
`fleet.ctl.list`, `POST /api/agents` is `fleet.ctl.spawn`, `GET /api/agents/{id}` is `show`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from nats.errors import NoRespondersError

from infra.resend import request as resend_request
from schemas import commands as c
from schemas import replies, subjects, validation
from schemas.control import ListRequest, SpawnRequest
from schemas.errors import BadRequest, FleetError, RemoteError, UnknownAgent
from schemas.notify import AlertmanagerPayload, from_alertmanager
from services import gateway_term
from services.client import COMMAND_TIMEOUT_S, RESTART_TIMEOUT_S, SPAWN_TIMEOUT_S, STOP_TIMEOUT_S
from services.gateway import (
    CALLER,
    HUB,
    METRICS,
    NC,
    STORE,
    TICKETS,
    TOKENS,
    Handler,
    holding,
    role,
    status_for,
    websocket,
    who,
)
from services.gateway_openapi_fields import FLAG as FLAGS_SCHEMA
from services.gateway_openapi_fields import ID, WHOLE, query
from services.tokens import ROLES

CHECKPOINT_TIMEOUT_S = 60.0  # a commit of a large worktree (as `fleet checkpoint`)
TIMEOUTS = {
    "stop": STOP_TIMEOUT_S,
    "kill": STOP_TIMEOUT_S,
    "remove": STOP_TIMEOUT_S,
    "restart": RESTART_TIMEOUT_S,
    "rollback": RESTART_TIMEOUT_S,
    "checkpoint": CHECKPOINT_TIMEOUT_S,
    "recreate_session": RESTART_TIMEOUT_S,
    "new_ports": RESTART_TIMEOUT_S,
    "restart_service": STOP_TIMEOUT_S,
}
# Commands that record facts observed by fleetd's own services, or that end an agent for good.
ADMIN_VERBS = frozenset(
    {
        "remove",
        "report_health",
        "mark_running",
        "mark_stopped",
        "fail",
        "observe_activity",
        "escalate",
    }
)
NOT_REST = frozenset({"create", "show", "output"})  # sent by the supervisor, or a GET below
# Error statuses of a request on the bus, besides bad input: a reply that refuses for the
# agent's state (409) or the sender's rate (429), nobody there or busy (503), no reply (504).
READS = (429, 503, 504)
COMMANDS = (409, *READS)
BUS = (503, 504)
REPLIES = {"probe_sandbox": "ProbesReply"}  # a command whose reply is not the agent's view


class _Head(msgspec.Struct):
    """Just enough of a reply to know its outcome; the body is passed on as is."""

    ok: bool = False
    error: replies.ErrorBody | None = None


_head = msgspec.json.Decoder(_Head)
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: Any = None  # a msgspec type, for the OpenAPI document
    reply: str = "Reply"  # the component name of the success reply
    status: int = 200  # the success status
    errors: tuple[int, ...] = ()  # error statuses besides those the route's shape implies
    query: tuple[dict[str, Any], ...] = field(default=(), compare=False)  # its ?parameters
    content: str = "application/json"  # of the success reply ("": none, as a WebSocket's)
    body_required: bool = False  # an empty body is refused even with no required field


def _tag(cmd: type[c.Command]) -> str:
    return str(cmd.__struct_config__.tag)


async def ask(
    request: web.Request,
    subject: str,
    payload: bytes,
    timeout: float,
    kind: str,
    nobody: FleetError,
    *,
    resend: bool = False,
) -> web.Response:
    """Send a request on the bus; the reply's body as is, with its outcome's status.

    With `resend` (an agent command with an id) it is sent again while unanswered, across
    its agent's reconnect (infra/resend.py)."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        try:
            nc = request.app[NC]
            if resend:
                msg = await resend_request(nc, subject, payload, timeout)
            else:
                headers = {subjects.TIMEOUT_HEADER: f"{timeout:g}"}  # a busy agent says so
                msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
        except NoRespondersError as e:
            raise nobody from e
        except TimeoutError as e:
            raise RemoteError(
                "timeout", f"no reply on {subject} within {timeout:.0f} s; it may still finish"
            ) from e
        head = _head.decode(msg.data)
        status = 200
        if not head.ok:
            outcome = head.error.code if head.error else "error"
            status = status_for(outcome)
        return web.Response(body=msg.data, status=status, content_type="application/json")
    except FleetError as e:
        outcome = e.code
        raise
    finally:
        request.app[METRICS].commands.labels(kind, outcome).observe(time.perf_counter() - started)


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    body = replies.decode_request(raw, dict[str, Any], "request body")
    assert isinstance(body, dict)
    return body


def _by(request: web.Request) -> str:
    """Who a REST request is from: always its token's name (a caller cannot say otherwise)."""
    return f"token:{who(request).name}"


def _no_by(body: object) -> None:
    """A caller's own `by` is refused: the log records the token, never a name it claims."""
    if isinstance(body, dict) and "by" in body:
        raise BadRequest(
            f"the field by ({str(body['by'])[:40]!r}) is not accepted over REST: a request "
            "is recorded as from its token's name; leave by out",
            code="by_not_accepted",
        )


def agent_of(request: web.Request) -> str:
    return subjects.token(request.match_info["agent"])


def _same_type(body: dict[str, Any], verb: str) -> None:
    """A body's `type` may be left out (the path says it); one that names another is refused."""
    if body.get("type", verb) != verb:
        raise BadRequest(
            f"the body's type ({str(body['type'])[:40]!r}) is not this route's command "
            f"({verb}); leave type out or send it to /api/agents/{{id}}/{str(body['type'])[:40]}",
            code="invalid_field",
        )


async def command(request: web.Request, verb: str, body: dict[str, Any]) -> web.Response:
    agent = agent_of(request)
    _no_by(body)
    _same_type(body, verb)
    fields = {"id": uuid.uuid4().hex, **body, "type": verb, "by": _by(request)}
    raw = _encode(fields)
    replies.decode_request(raw, c.AgentCommand, "command")  # refuse here, with the sentence
    timeout = TIMEOUTS.get(verb, COMMAND_TIMEOUT_S)
    nobody = UnknownAgent(agent)
    return await ask(request, subjects.command(agent), raw, timeout, verb, nobody, resend=True)


def _verb_handler(verb: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await command(request, verb, await json_body(request))

    handler.__name__ = f"post_{verb}"
    return role("admin" if verb in ADMIN_VERBS else "operator")(handler)


@role("viewer")
async def list_agents(request: web.Request) -> web.StreamResponse:
    removed = query_flag(request, "removed")
    raw = _encode(ListRequest(removed=removed, by=_by(request)))
    nobody = RemoteError("no_responders", "no supervisor answers; is `fleet up` running?")
    return await ask(request, subjects.control("list"), raw, COMMAND_TIMEOUT_S, "list", nobody)


@role("admin")
async def spawn(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    req = replies.decode_request(raw, SpawnRequest, "spawn request")
    _no_by(msgspec.json.decode(raw))  # it is JSON: SpawnRequest was read from it
    req = msgspec.structs.replace(req, by=_by(request))
    nobody = RemoteError("no_responders", "no supervisor answers; is `fleet up` running?")
    subject = subjects.control("spawn")
    response = await ask(request, subject, _encode(req), SPAWN_TIMEOUT_S, "spawn", nobody)
    if response.status == 200:
        response.set_status(201)
    return response


@role("viewer")
async def show(request: web.Request) -> web.StreamResponse:
    return await command(request, "show", {})


@role("admin")
async def remove(request: web.Request) -> web.StreamResponse:
    force = query_flag(request, "force")
    return await command(request, "remove", {"force": force})


@role("viewer")
async def output(request: web.Request) -> web.StreamResponse:
    fields: dict[str, Any] = {"window": request.query.get("window", "agent")}
    if "lines" in request.query:
        fields["lines"] = query_int(request, "lines")
    return await command(request, "output", fields)


FLAGS = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def query_flag(request: web.Request, name: str) -> bool:
    """`?name=1|true|yes` (or 0|false|no, or nothing); any other value is refused."""
    raw = request.query.get(name, "")
    if raw not in FLAGS:
        raise BadRequest(
            f"query parameter {name} must be 1, true, yes, 0, false or no, not {raw!r}"
        )
    return FLAGS[raw]


def query_int(request: web.Request, name: str, default: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a whole number, not {raw!r}") from None


class PastTheEnd(FleetError):
    """`?after=` names a sequence the agent's log has not reached: no such place (404)."""

    code = "not_found"

    def __init__(self, agent: str, after: int, last: int) -> None:
        self.agent, self.after, self.last = agent, after, last
        super().__init__(
            f"query parameter after ({after}) is past the end of agent {agent}'s log, "
            f"whose last event is sequence {last}"
        )


@role("viewer")
async def agent_events(request: web.Request) -> web.StreamResponse:
    """The agent's log after `?after=SEQ` (default: all), straight from JetStream."""
    agent = agent_of(request)
    after = query_int(request, "after")
    limit = query_int(request, "limit", 0)
    if after < 0:
        raise BadRequest(f"query parameter after must be 0 or more, not {after}")
    if after > 0:
        last = await request.app[STORE].last_seq(agent)
        if last == 0:
            raise UnknownAgent(agent)
        if after > last:
            raise PastTheEnd(agent, after, last)
    rows = await request.app[STORE].read(agent, after=after)
    if not rows and after == 0:
        raise UnknownAgent(agent)
    if limit > 0:
        rows = rows[-limit:]
    items = b",".join(b'{"seq":%d,"event":%s}' % (r.seq, r.raw) for r in rows)
    body = b'{"ok":true,"events":[' + items + b"]}"
    return web.Response(body=body, content_type="application/json")


ws_term = gateway_term.ws_term


@websocket
@role("viewer")
async def ws_events(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30)
    with holding(request, ws):  # closed at once if the token is revoked
        return await request.app[HUB].serve(request, ws)


class TicketRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """No fields (the body may be left out): a ticket is always for the caller's own token."""


@role("viewer")
async def create_ticket(request: web.Request) -> web.StreamResponse:
    """A single-use ticket for opening one WebSocket (`?ticket=`) as the caller's token."""
    raw = await request.read()
    if raw.strip():
        replies.decode_request(raw, TicketRequest, "ticket request")
    entry = who(request)
    tickets = request.app[TICKETS]
    ticket = tickets.issue(request[CALLER], entry)
    body = replies.ok(ticket=ticket, expires_in_s=tickets.ttl_s, role=entry.role, name=entry.name)
    return web.Response(body=body, content_type="application/json")


class TokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    role: str
    name: str = ""  # an id: it is the `by` of each request the token sends, and what revokes it

    def __post_init__(self) -> None:
        if self.name:
            validation.name(self.name, "token name")


@role("admin")
async def create_token(request: web.Request) -> web.StreamResponse:
    req = replies.decode_request(await request.read(), TokenRequest, "token request")
    token = request.app[TOKENS].create(req.role, req.name)
    return web.Response(
        body=replies.ok(token=token, role=req.role, name=req.name or req.role),
        status=201,
        content_type="application/json",
    )


@role("admin")
async def list_tokens(request: web.Request) -> web.StreamResponse:
    entries = request.app[TOKENS].entries().values()
    shown = [msgspec.to_builtins(entry) for entry in entries]
    return web.Response(
        body=replies.ok(tokens=shown, roles=list(ROLES)), content_type="application/json"
    )


@role("operator")
async def alertmanager(request: web.Request) -> web.StreamResponse:
    """Alertmanager's webhook: each alert becomes a notice on `fleet.notify.<severity>`."""
    payload = replies.decode_request(await request.read(), AlertmanagerPayload, "alert payload")
    notices = from_alertmanager(payload, datetime.now(UTC))
    nc = request.app[NC]
    for notice in notices:
        await nc.publish(subjects.notify(notice.severity), _encode(notice))
    await nc.flush()
    return web.Response(body=replies.ok(notices=len(notices)), content_type="application/json")


@role("public")
async def healthz(request: web.Request) -> web.StreamResponse:
    connected = NC in request.app and request.app[NC].is_connected
    body = (
        replies.ok(nats=connected)
        if connected
        else replies.error(FleetError("the gateway has lost its NATS connection"))
    )
    return web.Response(
        body=body, status=200 if connected else 503, content_type="application/json"
    )


@role("public")
async def metrics(request: web.Request) -> web.StreamResponse:
    from services.metrics import CONTENT_TYPE_LATEST

    m = request.app[METRICS]
    m.nats_connected.set(1 if NC in request.app and request.app[NC].is_connected else 0)
    m.ws_clients.set(len(request.app[HUB].listeners))
    response = web.Response(body=m.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@role("public")
async def openapi(request: web.Request) -> web.StreamResponse:
    from services.gateway_openapi import document

    return web.Response(body=document(all_routes()), content_type="application/json")


def _command_routes() -> list[Route]:
    found = []
    for cmd in c.COMMAND_TYPES:
        verb = _tag(cmd)
        if verb in NOT_REST:
            continue
        summary = (cmd.__doc__ or f"{verb} the agent").strip().splitlines()[0]
        found.append(
            Route(
                "POST",
                f"/api/agents/{{agent}}/{verb}",
                _verb_handler(verb),
                f"{verb}: {summary}",
                body=cmd,
                reply=REPLIES.get(verb, "AgentReply"),
                errors=COMMANDS,
            )
        )
    return found


_REMOVED = query("removed", FLAGS_SCHEMA, "also list removed agents (1, true or yes)")
_FORCE = query("force", FLAGS_SCHEMA, "remove even a worktree with unsaved work")
_WINDOW = query("window", ID, "the tmux window (default: agent)")
_LINES = query("lines", WHOLE, "how many lines of scrollback (default 200, at most 50,000)")
_AFTER = query("after", {"type": "integer", "minimum": 0}, "events after this sequence")
_LAST = query("limit", WHOLE, "only the last LIMIT events (0 or less: all)")

ROUTES: list[Route] = [
    Route(
        "GET",
        "/api/agents",
        list_agents,
        "list agents (the supervisor's list)",
        reply="ListReply",
        errors=BUS,
        query=(_REMOVED,),
    ),
    Route(
        "POST",
        "/api/agents",
        spawn,
        "spawn an agent (the supervisor's spawn)",
        SpawnRequest,
        "AgentReply",
        status=201,
        errors=(404, *COMMANDS),  # 404: an unknown template
    ),
    Route("GET", "/api/agents/{agent}", show, "show one agent", reply="AgentReply", errors=READS),
    Route(
        "DELETE",
        "/api/agents/{agent}",
        remove,
        "remove an agent for good",
        reply="AgentReply",
        errors=COMMANDS,
        query=(_FORCE,),
    ),
    Route(
        "GET",
        "/api/agents/{agent}/events",
        agent_events,
        "the agent's event log",
        reply="EventsReply",
        errors=(503,),
        query=(_AFTER, _LAST),
    ),
    Route(
        "GET",
        "/api/agents/{agent}/output",
        output,
        "the agent's screen",
        reply="OutputReply",
        errors=READS,
        query=(_WINDOW, _LINES),
    ),
    *_command_routes(),
    Route("GET", "/api/tokens", list_tokens, "list tokens (digests are never shown)"),
    Route(
        "POST",
        "/api/tokens",
        create_token,
        "create a token",
        TokenRequest,
        "TokenReply",
        status=201,
    ),
    Route(
        "POST",
        "/api/alertmanager",
        alertmanager,
        "Alertmanager webhook receiver",
        AlertmanagerPayload,
        body_required=True,
    ),
    Route(
        "POST",
        "/api/tickets",
        create_ticket,
        "a single-use ticket (30 s) to open one WebSocket with ?ticket=, as this token",
        TicketRequest,
        "TicketReply",
        errors=(429,),
    ),
    Route(
        "GET",
        "/ws/events",
        ws_events,
        "WebSocket of live events (?agent=a1,a2; ?ticket= from POST /api/tickets)",
        status=101,
        content="",
        query=(query("agent", {"type": "string"}, "only these agents (ids, comma-separated)"),),
    ),
    Route(
        "GET",
        "/ws/term/{agent}",
        ws_term,
        "WebSocket terminal onto the agent's pane (?cols=&rows=; viewers read only; "
        "?ticket= from POST /api/tickets)",
        status=101,
        content="",
        query=(
            query("cols", WHOLE, "columns"),
            query("rows", WHOLE, "rows"),
            query("readonly", {"type": "string"}, "1: an operator's terminal that only reads"),
        ),
    ),
    Route("GET", "/healthz", healthz, "liveness, and whether NATS is connected", errors=(503,)),
    Route("GET", "/metrics", metrics, "Prometheus metrics", content="text/plain"),
    Route("GET", "/openapi.json", openapi, "this document"),
]


def all_routes() -> list[Route]:
    """This module's routes and the agent page's (gateway_agent imports this module)."""
    from services import gateway_agent

    return [*ROUTES, *gateway_agent.ROUTES]


def add_routes(app: web.Application) -> None:
    for route in all_routes():
        app.router.add_route(route.method, route.path, route.handler)
    from services import gateway_web

    gateway_term.setup(app)
    gateway_web.add_routes(app)

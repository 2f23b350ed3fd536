"""The agents' REST, which mirrors the bus, and the live feed of their events.

Each command of `schemas.commands` (but `create`, which the supervisor sends) is
`POST /api/agents/{id}/<type>` with the command's other fields as the JSON body; the reply is
the actor's reply as is, with the HTTP status its outcome maps to. `GET /api/agents` is
`fleet.ctl.list`, `POST /api/agents` is `fleet.ctl.spawn`, `GET /api/agents/{id}` is `show`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from schemas import commands as c
from schemas import replies, subjects
from schemas.control import ListRequest, SpawnRequest
from schemas.errors import BadRequest, FleetError, RemoteError, UnknownAgent
from services.cli.client import COMMAND_TIMEOUT_S, SPAWN_TIMEOUT_S
from services.gateway.keys import HUB, STORE, Handler, holding, role, websocket
from services.gateway.openapi_fields import FLAG as FLAGS_SCHEMA
from services.gateway.openapi_fields import ID, WHOLE, query
from services.gateway.routing import (
    BUS,
    COMMANDS,
    READS,
    Route,
    agent_of,
    ask,
    by,
    command,
    encode,
    json_body,
    no_by,
    query_flag,
    query_int,
)

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
REPLIES = {"probe_sandbox": "ProbesReply"}  # a command whose reply is not the agent's view
NO_SUPERVISOR = "no supervisor answers; is `fleet up` running?"


def _tag(cmd: type[c.Command]) -> str:
    return str(cmd.__struct_config__.tag)


def _verb_handler(verb: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await command(request, verb, await json_body(request))

    handler.__name__ = f"post_{verb}"
    return role("admin" if verb in ADMIN_VERBS else "operator")(handler)


@role("viewer")
async def list_agents(request: web.Request) -> web.StreamResponse:
    removed = query_flag(request, "removed")
    raw = encode(ListRequest(removed=removed, by=by(request)))
    nobody = RemoteError("no_responders", NO_SUPERVISOR)
    return await ask(request, subjects.control("list"), raw, COMMAND_TIMEOUT_S, "list", nobody)


@role("admin")
async def spawn(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    req = replies.decode_request(raw, SpawnRequest, "spawn request")
    no_by(msgspec.json.decode(raw))  # it is JSON: SpawnRequest was read from it
    req = msgspec.structs.replace(req, by=by(request))
    nobody = RemoteError("no_responders", NO_SUPERVISOR)
    subject = subjects.control("spawn")
    response = await ask(request, subject, encode(req), SPAWN_TIMEOUT_S, "spawn", nobody)
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


@websocket
@role("viewer")
async def ws_events(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30)
    with holding(request, ws):  # closed at once if the token is revoked
        return await request.app[HUB].serve(request, ws)


def command_routes() -> list[Route]:
    """`POST /api/agents/{agent}/<verb>` for each command sent over REST."""
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


def agent_routes() -> list[Route]:
    """The agents' routes; each call makes the command routes' handlers anew (no state)."""
    return [
        Route(
            "GET",
            "/api/agents",
            list_agents,
            "list agents (the supervisor's list)",
            reply="AgentsReply",
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
            errors=(404, *COMMANDS),  # 404: an unknown template, repository, ref or program
        ),
        Route(
            "GET", "/api/agents/{agent}", show, "show one agent", reply="AgentReply", errors=READS
        ),
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
        *command_routes(),
    ]


def feed_routes() -> list[Route]:
    return [
        Route(
            "GET",
            "/ws/events",
            ws_events,
            "WebSocket of live events (?agent=a1,a2; ?ticket= from POST /api/tickets)",
            status=101,
            content="",
            query=(query("agent", {"type": "string"}, "only these agents (ids, comma-separated)"),),
        )
    ]

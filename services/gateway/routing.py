"""What every route group builds on: the route table's row, a request on the bus, and the
reading of a request's body and query.

`ask` sends a request on the bus and answers with the reply's body as is, with the HTTP status
its outcome has in `httpstatus.STATUS`; `command` is one agent command
(`POST /api/agents/{id}/<type>`), its `by` always the caller's token's name.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from nats.errors import NoRespondersError

from infra.resend import request as resend_request
from schemas import commands as c
from schemas import replies, subjects
from schemas.errors import BadRequest, FleetError, RemoteError, UnknownAgent
from services.cli.client import (
    COMMAND_TIMEOUT_S,
    RESTART_TIMEOUT_S,
    STOP_TIMEOUT_S,
)
from services.gateway.httpstatus import status_for
from services.gateway.keys import METRICS, NC, Handler, who

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
# Error statuses of a request on the bus, besides bad input and an unknown agent: a reply that
# refuses for the agent's state (409) or the sender's rate (429), a program the agent drives
# that failed (502: git, tmux), nobody there or busy (503), no reply (504).
READS = (409, 429, 502, 503, 504)
COMMANDS = READS
BUS = (503, 504)


class _Head(msgspec.Struct):
    """Just enough of a reply to know its outcome; the body is passed on as is."""

    ok: bool = False
    error: replies.ErrorBody | None = None


_head = msgspec.json.Decoder(_Head)
encode = msgspec.json.Encoder().encode


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


def by(request: web.Request) -> str:
    """Who a REST request is from: always its token's name (a caller cannot say otherwise)."""
    return f"token:{who(request).name}"


def no_by(body: object) -> None:
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
    no_by(body)
    _same_type(body, verb)
    fields = {"id": uuid.uuid4().hex, **body, "type": verb, "by": by(request)}
    raw = encode(fields)
    replies.decode_request(raw, c.AgentCommand, "command")  # refuse here, with the sentence
    timeout = TIMEOUTS.get(verb, COMMAND_TIMEOUT_S)
    nobody = UnknownAgent(agent)
    return await ask(request, subjects.command(agent), raw, timeout, verb, nobody, resend=True)


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

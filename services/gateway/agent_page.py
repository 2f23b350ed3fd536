"""The agent page's REST: one agent's checkpoints, mail and health, over the CLI's subjects.

- Checkpoints are read from the agent's log in JetStream (no actor needed, as `fleet
  checkpoints` does); one is taken with the agent's `checkpoint` command on `fleet.cmd.<id>`,
  and `POST /api/agents/{id}/rollback` (agents.py's command route) rolls back to one.
- Mail is looked at without taking it (`Mailbox.peek`, as `fleet inbox` does) and sent to
  `fleet.mail.<id>.<priority>` (as `fleet mail send`), from the token's name.
- Health is the health service's answer on `fleet.ctl.health` (as `fleet health`).
  `GET /api/health` is the latest psutil sample of every agent seen on `fleet.health.*`,
  which the grid's CPU and memory start from; later samples come over `/ws/events`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from schemas import replies, subjects
from schemas.errors import BadRequest, RemoteError, UnknownAgent
from schemas.mail import MailMessage
from services.gateway.keys import HUB, MAILBOX, STORE, role, who
from services.gateway.openapi_fields import query
from services.gateway.routing import (
    BUS,
    COMMANDS,
    Route,
    agent_of,
    ask,
    by,
    command,
    json_body,
    query_int,
)

HEALTH_TIMEOUT_S = 5.0
MAX_LIST = 200
MAX_LABEL = 200
HEALTH_KINDS = ("", "sample", "probe", "recovery")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class TakeCheckpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/agents/{id}/checkpoints`: a person's checkpoint, with an optional label."""

    label: str = ""


class SendMail(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/agents/{id}/mail`: a message to the agent; it is sent from the token's name."""

    body: str
    subject: str = ""
    priority: str = "normal"  # critical | high | normal | low
    ttl_s: float = 0.0  # 0: kept until read


def _json(status: int = 200, **fields: Any) -> web.Response:
    return web.Response(body=replies.ok(**fields), status=status, content_type="application/json")


def _limit(request: web.Request, default: int) -> int:
    limit = query_int(request, "limit", default)
    if not 1 <= limit <= MAX_LIST:
        raise BadRequest(f"query parameter limit must be 1 to {MAX_LIST}, not {limit}")
    return limit


async def _known(request: web.Request) -> str:
    """The agent named in the path, if its log has any event; else `unknown_agent` (404)."""
    agent = agent_of(request)
    if await request.app[STORE].last_seq(agent) == 0:
        raise UnknownAgent(agent)
    return agent


def _sender(request: web.Request) -> str:
    """The token's name as a mail sender (a subject-safe token)."""
    entry = who(request)
    return _UNSAFE.sub("_", entry.name or entry.role)[:64] or entry.role


@role("viewer")
async def list_checkpoints(request: web.Request) -> web.StreamResponse:
    agent = agent_of(request)
    loaded = await request.app[STORE].load(agent)
    if loaded.position.seq == 0:
        raise UnknownAgent(agent)
    found = [msgspec.to_builtins(cp) for cp in loaded.state.checkpoints]
    return _json(agent=agent, checkpoints=found)


@role("operator")
async def take_checkpoint(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    req = replies.decode_request(raw or b"{}", TakeCheckpoint, "checkpoint request")
    if len(req.label) > MAX_LABEL or any(ch < " " or ch == "\x7f" for ch in req.label):
        raise BadRequest(
            f"invalid checkpoint request: `label` must be one line of at most {MAX_LABEL} "
            "characters, without control characters"
        )
    response = await command(request, "checkpoint", {"label": req.label})
    if response.status == 200:
        response.set_status(201)
    return response


@role("viewer")
async def inbox(request: web.Request) -> web.StreamResponse:
    """What waits in the agent's mailbox, highest priority first; nothing is taken."""
    agent = await _known(request)
    items = await request.app[MAILBOX].peek(agent, _limit(request, 50))
    return _json(agent=agent, mail=[msgspec.to_builtins(i) for i in items])


@role("operator")
async def send_mail(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    req = replies.decode_request(msgspec.json.encode(body), SendMail, "mail request")
    if not req.body.strip():
        raise BadRequest("invalid mail request: `body` is empty; write what the agent should read")
    subjects.mail("x", req.priority)  # an unknown priority is one sentence, before any lookup
    agent = await _known(request)
    message = MailMessage(
        from_=_sender(request), body=req.body, subject=req.subject, ttl_s=req.ttl_s
    )
    seq = await request.app[MAILBOX].send(agent, message, req.priority)
    return _json(201, agent=agent, seq=seq, priority=req.priority, **{"from": message.from_})


@role("viewer")
async def agent_health(request: web.Request) -> web.StreamResponse:
    """The health service's report on the agent: services, recovery ladder, recent history."""
    agent = agent_of(request)
    kind = request.query.get("kind", "")
    if kind not in HEALTH_KINDS:
        raise BadRequest(
            f"query parameter kind must be one of sample, probe, recovery, not {kind!r}"
        )
    payload = msgspec.json.encode(
        {
            "agent": agent,
            "limit": _limit(request, 20),
            "kind": kind,
            "by": by(request),
        }
    )
    nobody = RemoteError("no_responders", "no health service answers; is `fleet up` running?")
    subject = subjects.control("health")
    return await ask(request, subject, payload, HEALTH_TIMEOUT_S, "health", nobody)


@role("viewer")
async def samples(request: web.Request) -> web.StreamResponse:
    """The latest psutil sample of each agent the gateway has seen on `fleet.health.*`."""
    latest = request.app[HUB].samples
    items = b",".join(b'"%s":%s' % (agent.encode(), raw) for agent, raw in latest.items())
    return web.Response(
        body=b'{"ok":true,"samples":{' + items + b"}}", content_type="application/json"
    )


_LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST}, "at most")
_KIND = query("kind", {"enum": list(HEALTH_KINDS)}, "only observations of this kind")


def agent_page_routes() -> list[Route]:
    return [
        Route(
            "GET",
            "/api/agents/{agent}/checkpoints",
            list_checkpoints,
            "the agent's checkpoints (from its log)",
            reply="CheckpointsReply",
            errors=(503,),
        ),
        Route(
            "POST",
            "/api/agents/{agent}/checkpoints",
            take_checkpoint,
            "take a checkpoint (the agent's checkpoint command); roll back with POST .../rollback",
            TakeCheckpoint,
            "CheckpointReply",
            status=201,
            errors=COMMANDS,
        ),
        Route(
            "GET",
            "/api/agents/{agent}/mail",
            inbox,
            "the agent's waiting mail, highest priority first (?limit=; nothing is taken)",
            reply="InboxReply",
            errors=(503,),
            query=(_LIMIT,),
        ),
        Route(
            "POST",
            "/api/agents/{agent}/mail",
            send_mail,
            "mail the agent (from the token's name)",
            SendMail,
            "SentReply",
            status=201,
            errors=(429, 503),
        ),
        Route(
            "GET",
            "/api/agents/{agent}/health",
            agent_health,
            "the health service's report (?limit=&kind=sample|probe|recovery)",
            reply="HealthReply",
            errors=BUS,
            query=(_LIMIT, _KIND),
        ),
        Route(
            "GET",
            "/api/health",
            samples,
            "the latest CPU/memory sample of each agent",
            reply="SamplesReply",
        ),
    ]

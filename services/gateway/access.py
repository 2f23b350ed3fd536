"""Tokens and tickets over REST: an admin makes and lists tokens; any caller asks for a ticket
to open one WebSocket as itself (`tickets.py` says why a WebSocket needs one)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from schemas import replies, validation
from services.gateway.keys import CALLER, TICKETS, TOKENS, role, who
from services.gateway.routing import Route
from services.tokens import ROLES


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


def token_routes() -> list[Route]:
    return [
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
    ]


def ticket_routes() -> list[Route]:
    return [
        Route(
            "POST",
            "/api/tickets",
            create_ticket,
            "a single-use ticket (30 s) to open one WebSocket with ?ticket=, as this token",
            TicketRequest,
            "TicketReply",
            errors=(429,),
        )
    ]

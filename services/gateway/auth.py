"""Who is calling: the bearer token (or a WebSocket's ticket) and the role a route needs.

Every route names the least role it needs (`keys.role`); a token comes only as
`Authorization: Bearer <token>`. A WebSocket may instead carry `?ticket=` (`tickets.py`).
A token in the URL is refused. No token or an unknown one: 401; a role too small: 403.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.keys import CALLER, TICKETS, TOKENS, WHO, Handler, is_websocket, role_of
from services.gateway.tickets import Forbidden, Unauthorized
from services.tokens import TokenEntry, allows, digest

TOKEN_IN_URL = (
    "a token is not accepted in the URL (URLs end up in logs and histories): send "
    "`Authorization: Bearer <token>`; to open a WebSocket from a browser, POST /api/tickets "
    "with that header and open the WebSocket with ?ticket=<ticket>"
)
TICKET_NOT_HERE = (
    "a ticket opens a WebSocket only (/ws/...); send `Authorization: Bearer <token>` instead"
)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return ""


def _caller(request: web.Request) -> tuple[str, TokenEntry]:
    """The digest and entry of the caller's token (header, or a WebSocket's ticket)."""
    if "token" in request.query:
        raise Unauthorized(TOKEN_IN_URL)
    token = _bearer(request)
    ticket = request.query.get("ticket")
    if ticket is not None and not token:
        if not is_websocket(request.match_info.handler):
            raise Unauthorized(TICKET_NOT_HERE)
        return request.app[TICKETS].redeem(ticket, request.app[TOKENS])
    entry = request.app[TOKENS].check(token) if token else None
    if entry is None:
        why = "an unknown token" if token else "no token"
        raise Unauthorized(
            f"{why}: send `Authorization: Bearer <token>` "
            "(`fleet token create --role viewer` makes one)"
        )
    return digest(token), entry


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = role_of(request.match_info.handler)
    if needed == "public" or isinstance(request.match_info.route.resource, web.StaticResource):
        return await handler(request)
    token_digest, entry = _caller(request)
    if not allows(entry.role, needed):
        raise Forbidden(
            f"token {entry.name!r} is a {entry.role}; {request.method} "
            f"{request.path} needs {needed}"
        )
    request[WHO] = entry
    request[CALLER] = token_digest
    return await handler(request)

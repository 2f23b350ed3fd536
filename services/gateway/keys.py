"""The bottom of the gateway: its app and request keys and what marks a handler.

Every other module of the gateway imports this one and none of them is imported here, so the
gateway's modules form a DAG: keys and helpers (this, `tickets`, `hub`, `httpstatus`, `auth`,
`routing`), the route groups (`agents`, `agent_page`, `access`, `ops`, `term`, `static`,
`openapi`), and the app factory on top (`app`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from nats.aio.client import Client

from infra.config import Settings
from infra.eventstore import EventStore
from infra.mailbox import Mailbox
from services.gateway.hub import Hub
from services.gateway.tickets import Sockets, Tickets
from services.metrics import FleetMetrics
from services.tokens import TokenEntry, TokenStore

SETTINGS = web.AppKey("settings", Settings)
NATS_URL = web.AppKey("nats_url", str)
NC = web.AppKey("nc", Client)
STORE = web.AppKey("store", EventStore)
TOKENS = web.AppKey("tokens", TokenStore)
METRICS = web.AppKey("metrics", FleetMetrics)
HUB = web.AppKey("hub", Hub)
MAILBOX = web.AppKey("mailbox", Mailbox)
TICKETS = web.AppKey("tickets", Tickets)
SOCKETS = web.AppKey("sockets", Sockets)
WHO = web.RequestKey("who", TokenEntry)  # the caller, once authenticated
CALLER = web.RequestKey("caller", str)  # the digest of the caller's token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def role(needed: str) -> Callable[[Handler], Handler]:
    """Mark a handler with the least role that may call it (`public`: no token)."""

    def mark(handler: Handler) -> Handler:
        handler.fleet_role = needed  # type: ignore[attr-defined]
        return handler

    return mark


def role_of(handler: object) -> str:
    """The least role a handler needs (unmarked: `viewer`)."""
    return str(getattr(handler, "fleet_role", "viewer"))


def websocket(handler: Handler) -> Handler:
    """Mark a handler that answers with a WebSocket: it may be opened with `?ticket=`."""
    handler.fleet_websocket = True  # type: ignore[attr-defined]
    return handler


def is_websocket(handler: object) -> bool:
    return bool(getattr(handler, "fleet_websocket", False))


def who(request: web.Request) -> TokenEntry:
    return request[WHO]


@contextlib.contextmanager
def holding(request: web.Request, ws: web.WebSocketResponse) -> Iterator[None]:
    """Keep `ws` among the caller's open sockets (closed if its token is revoked)."""
    with request.app[SOCKETS].hold(ws, request[CALLER], who(request)):
        yield

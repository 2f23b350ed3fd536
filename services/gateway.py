"""The gateway: an aiohttp application over the bus (REST, live events, `/metrics`, `/healthz`).

`init(settings, nats_url)` builds the application; its NATS connection, the event store and
the readers behind `/metrics` and `/ws/events` open and close in `app.cleanup_ctx`. `start`
listens on 127.0.0.1 (port 0: any free port) and returns the URL; `fleet up` calls it.

Auth: every route names the least role it needs (`public`, `viewer`, `operator`, `admin`); a
token comes only as `Authorization: Bearer <token>`. A WebSocket (where a browser cannot set
headers) may instead carry `?ticket=`, from `POST /api/tickets`: single use, short-lived, bound
to the token (services/gateway_auth.py). A token in the URL (`?token=`) is refused, since URLs
end up in logs and histories. No token or an unknown one: 401; a role too small: 403. A
revoked token's open WebSockets are closed (code 1008, with a sentence) within `WATCH_S`.
Errors (STYLE §7): a `FleetError` (ours or in a reply) is a 4xx with
`{"ok": false, "error": {...}}`; anything else is a 500 whose id is in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import msgspec
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from infra import fleetkey
from infra.config import Settings
from infra.eventfollow import LiveCheck, read_stream
from infra.eventstore import EventStore, decode
from infra.mailbox import Mailbox
from infra.nats import connect
from schemas import replies, subjects
from schemas.errors import FleetError, InvalidSetting, PayloadTooLarge
from services.gateway_auth import Forbidden, Sockets, Tickets, Unauthorized, watch_tokens
from services.gateway_events import Hub
from services.metrics import FleetMetrics
from services.tokens import TokenEntry, TokenStore, allows, digest

log = logging.getLogger(__name__)

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

MAIL_POLL_S = 5.0

STATUS = {
    "unknown_agent": 404,
    "unknown_checkpoint": 404,
    "unknown_service": 404,
    "unknown_template": 404,
    "not_a_repository": 404,  # a spawn's repo: no git repository there
    "not_installed": 404,  # a spawn's command: no such program on the PATH
    "unknown_ref": 404,  # a spawn's base ref: no such commit in the repository
    "unknown_window": 404,  # the agent's session has no such tmux window
    "not_found": 404,
    "agent_exists": 409,
    "invalid_transition": 409,
    "concurrent_update": 409,
    "worktree_has_work": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "too_many_agents": 429,
    "internal": 500,
    "busy": 503,  # the agent is in another step; nothing was done, try again
    "store_unavailable": 503,
    "no_responders": 503,
    "timeout": 504,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def role(needed: str) -> Callable[[Handler], Handler]:
    """Mark a handler with the least role that may call it (`public`: no token)."""

    def mark(handler: Handler) -> Handler:
        handler.fleet_role = needed  # type: ignore[attr-defined]
        return handler

    return mark


def websocket(handler: Handler) -> Handler:
    """Mark a handler that answers with a WebSocket: it may be opened with `?ticket=`."""
    handler.fleet_websocket = True  # type: ignore[attr-defined]
    return handler


def is_websocket(handler: object) -> bool:
    return bool(getattr(handler, "fleet_websocket", False))


def status_for(code: str) -> int:
    return STATUS.get(code, 400)


def error_response(err: FleetError, status: int | None = None) -> web.Response:
    return web.Response(
        body=replies.error(err),
        status=status or status_for(err.code),
        content_type="application/json",
    )


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
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        size = request.content_length or 0
        return error_response(PayloadTooLarge("request body", size, request.client_max_size))
    except web.HTTPException:
        raise
    except FleetError as e:
        return error_response(e)
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("gateway: %s %s failed (error id %s)", request.method, request.path, error_id)
        return web.Response(
            body=replies.unexpected(error_id), status=500, content_type="application/json"
        )


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = getattr(request.match_info.handler, "fleet_role", "viewer")
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


STATUS.update({"unauthorized": 401, "forbidden": 403, "unreadable_tokens": 500})


def who(request: web.Request) -> TokenEntry:
    return request[WHO]


@contextlib.contextmanager
def holding(request: web.Request, ws: web.WebSocketResponse) -> Iterator[None]:
    """Keep `ws` among the caller's open sockets (closed if its token is revoked)."""
    with request.app[SOCKETS].hold(ws, request[CALLER], who(request)):
        yield


def init(settings: Settings, nats_url: str) -> web.Application:
    """The gateway application; NATS is opened when it starts and closed when it stops."""
    from services import gateway_api

    app = web.Application(middlewares=[_errors, _auth], client_max_size=replies.MAX_REQUEST_BYTES)
    app[SETTINGS] = settings
    app[NATS_URL] = nats_url
    app[TOKENS] = TokenStore(settings.state_dir)
    app[METRICS] = FleetMetrics()
    app[HUB] = Hub()
    app[TICKETS] = Tickets()
    app[SOCKETS] = Sockets()
    app.cleanup_ctx.append(_nats)
    app.cleanup_ctx.append(_watch_tokens)
    gateway_api.add_routes(app)
    return app


async def _nats(app: web.Application) -> AsyncIterator[None]:
    nc = await connect(app[NATS_URL], name="fleet-gateway")
    app[NC] = nc
    # The fleet key: the REST events, the live feed and the metrics take only what verifies
    app[STORE] = EventStore(nc, mac_key=fleetkey.load_or_create(app[SETTINGS].state_dir))
    app[MAILBOX] = Mailbox(nc)
    subs: list[Subscription] = [
        await app[HUB].follow(app[STORE]),  # what is stored from now on, verified
        await _read_log(app),
        await nc.subscribe(subjects.ALL_HEALTH, cb=_on_health(app[METRICS], app[HUB])),
    ]
    poller = asyncio.create_task(_poll_mail(nc, app[METRICS]))
    try:
        yield
    finally:
        poller.cancel()  # a cancel nats-py swallows ends it at its next round; waited for so
        await asyncio.wait([poller], timeout=MAIL_POLL_S + 1.0)  # long, never cancelled again
        for ws_listener in list(app[HUB].listeners):
            await ws_listener.ws.close()
        for sub in subs:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await sub.unsubscribe()
        await app[MAILBOX].close()
        await nc.close()


async def _watch_tokens(app: web.Application) -> AsyncIterator[None]:
    """Close the WebSockets of revoked tokens for as long as the gateway runs."""
    watcher = asyncio.create_task(watch_tokens(app[TOKENS], app[SOCKETS]))
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await app[SOCKETS].drain()
        app[TOKENS].close()


async def _read_log(app: web.Application) -> Subscription:
    """Follow the whole log (from its start) into the metrics, with an ordered consumer;
    an event that does not verify is refused (logged, counted in `fleet_events_refused`) and
    not folded."""
    metrics = app[METRICS]
    check = LiveCheck(app[STORE], "gateway metrics", from_start=True, on_refused=metrics.refused)

    async def on_msg(msg: Msg) -> None:
        if not await check.passes_msg(msg):
            return
        stored = decode(0, msg.data)
        if stored.event is not None:
            metrics.observe(stored.event)

    return await read_stream(app[STORE].js, on_msg, from_start=True)


def _on_health(metrics: FleetMetrics, hub: Hub) -> Callable[[Msg], Awaitable[None]]:
    """`fleet.health.<agent>`: into the metrics; a psutil sample also to the dashboards."""

    async def on_msg(msg: Msg) -> None:
        try:
            data = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            log.debug("a health observation on %s is not JSON; ignored", msg.subject)
            return
        agent = msg.subject.rpartition(".")[2]
        metrics.health_observation(agent, data)
        if isinstance(data, dict) and data.get("kind") == "sample":
            hub.on_sample(agent, msg.data)

    return on_msg


async def _poll_mail(nc: Client, metrics: FleetMetrics) -> None:
    js = nc.jetstream()
    while not _cancelling():  # a cancel nats-py swallowed (in its flush) still ends the loop
        try:
            info = await js.stream_info(subjects.MAIL_STREAM, subjects_filter=subjects.ALL_MAIL)
            dead = await js.stream_info(subjects.MAIL_DLQ_STREAM)
            metrics.mail(dict(info.state.subjects or {}), dead.state.messages)
        except NotFoundError:
            pass  # no mail streams yet
        except Exception as e:  # NATS away: the gauges keep their last values
            if _cancelling():
                raise  # nats-py turned the cancel into its own error: the loop must end
            log.debug("mail depth not read: %r", e)
        await asyncio.sleep(MAIL_POLL_S)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
    """Listen on `host:port` (0: any free port); `url_of(runner)` says where."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()  # the app's start: its NATS connection and tasks
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:  # taken: the app's tasks end with the runner, and fleet up says why
        await runner.cleanup()
        why = "it is taken" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise InvalidSetting(
            "FLEET_GATEWAY_PORT", str(port),
            f"the gateway cannot listen on {host}:{port}: {why}; set FLEET_GATEWAY_PORT to a "
            "free port (0: any)",
        ) from e  # fmt: skip
    return runner


def url_of(runner: web.AppRunner) -> str:
    for address in runner.addresses:
        host, port = address[0], address[1]
        return f"http://{host}:{port}"
    raise FleetError("the gateway is not listening")


def elapsed(started: float) -> float:
    return time.perf_counter() - started

"""The gateway's top: the app factory over the bus (REST, live events, `/metrics`, `/healthz`).

`init(settings, nats_url)` builds the application; its NATS connection, the event store and
the readers behind `/metrics` and `/ws/events` open and close in `app.cleanup_ctx`. `start`
listens on 127.0.0.1 (port 0: any free port) and returns the URL; `fleet up` calls it.

Auth: every route names the least role it needs (`public`, `viewer`, `operator`, `admin`); a
token comes only as `Authorization: Bearer <token>`. A WebSocket (where a browser cannot set
headers) may instead carry `?ticket=`, from `POST /api/tickets`: single use, short-lived, bound
to the token (tickets.py). A token in the URL (`?token=`) is refused, since URLs end up in
logs and histories. No token or an unknown one: 401; a role too small: 403 (auth.py). A
revoked token's open WebSockets are closed (code 1008, with a sentence) within `WATCH_S`.
Errors (CONTRIBUTING.md, "A new error"): a `FleetError` (ours or in a reply) is
`{"ok": false, "error": {...}}` with the status its code has in httpstatus.py's one table;
anything else is a 500 whose id is in the log (`httpstatus.errors`, through
infra/errorlog.py's boundary).

Nothing below imports this module: keys and helpers at the bottom, the route groups in the
middle (keys.py lists them), this factory on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from infra import fleetkey
from infra.config import Settings
from infra.eventfollow import LiveCheck, read_stream
from infra.eventscan import decode
from infra.eventstore import EventStore
from infra.mailbox import Mailbox
from infra.nats import connect
from schemas import replies, subjects
from schemas.errors import FleetError, InvalidSetting
from services.gateway.access import ticket_routes, token_routes
from services.gateway.agent_page import agent_page_routes
from services.gateway.agents import agent_routes, feed_routes
from services.gateway.auth import authenticate
from services.gateway.httpstatus import errors
from services.gateway.hub import Hub
from services.gateway.keys import (
    HUB,
    MAILBOX,
    METRICS,
    NATS_URL,
    NC,
    SETTINGS,
    SOCKETS,
    STORE,
    TICKETS,
    TOKENS,
)
from services.gateway.openapi import ROUTES, doc_routes
from services.gateway.ops import alert_routes, probe_routes
from services.gateway.routing import Route
from services.gateway.static import add_static_routes
from services.gateway.term import term_routes, watch_terms
from services.gateway.tickets import Sockets, Tickets, watch_tokens
from services.metrics import FleetMetrics
from services.tokens import TokenStore

log = logging.getLogger(__name__)

MAIL_POLL_S = 5.0


def all_routes() -> list[Route]:
    """Every route of the REST API, in the order they are matched and documented."""
    return [
        *agent_routes(),
        *token_routes(),
        *alert_routes(),
        *ticket_routes(),
        *feed_routes(),
        *term_routes(),
        *probe_routes(),
        *doc_routes(),
        *agent_page_routes(),
    ]


def init(settings: Settings, nats_url: str) -> web.Application:
    """The gateway application; NATS is opened when it starts and closed when it stops."""
    app = web.Application(
        middlewares=[errors, authenticate], client_max_size=replies.MAX_REQUEST_BYTES
    )
    app[SETTINGS] = settings
    app[NATS_URL] = nats_url
    app[TOKENS] = TokenStore(settings.state_dir)
    app[METRICS] = FleetMetrics()
    app[HUB] = Hub()
    app[TICKETS] = Tickets()
    app[SOCKETS] = Sockets()
    app.cleanup_ctx.append(_nats)
    app.cleanup_ctx.append(_watch_tokens)
    routes = tuple(all_routes())
    app[ROUTES] = routes
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    watch_terms(app)
    add_static_routes(app)
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

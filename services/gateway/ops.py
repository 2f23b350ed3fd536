"""What the fleet's operations tools call: liveness, Prometheus metrics, Alertmanager's webhook."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from schemas import replies, subjects
from schemas.errors import FleetError
from schemas.notify import AlertmanagerPayload, from_alertmanager
from services.gateway.keys import HUB, METRICS, NC, role
from services.gateway.routing import Route, encode
from services.metrics import CONTENT_TYPE_LATEST


@role("operator")
async def alertmanager(request: web.Request) -> web.StreamResponse:
    """Alertmanager's webhook: each alert becomes a notice on `fleet.notify.<severity>`."""
    payload = replies.decode_request(await request.read(), AlertmanagerPayload, "alert payload")
    notices = from_alertmanager(payload, datetime.now(UTC))
    nc = request.app[NC]
    for notice in notices:
        await nc.publish(subjects.notify(notice.severity), encode(notice))
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
    m = request.app[METRICS]
    m.nats_connected.set(1 if NC in request.app and request.app[NC].is_connected else 0)
    m.ws_clients.set(len(request.app[HUB].listeners))
    response = web.Response(body=m.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def alert_routes() -> list[Route]:
    return [
        Route(
            "POST",
            "/api/alertmanager",
            alertmanager,
            "Alertmanager webhook receiver",
            AlertmanagerPayload,
            body_required=True,
        )
    ]


def probe_routes() -> list[Route]:
    return [
        Route("GET", "/healthz", healthz, "liveness, and whether NATS is connected", errors=(503,)),
        Route("GET", "/metrics", metrics, "Prometheus metrics", content="text/plain"),
    ]

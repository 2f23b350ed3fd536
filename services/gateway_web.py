"""The dashboard: static files from services/web/, served at `/` without a token.

The page itself holds no data; it asks for a token (kept in the browser's localStorage) and
then reads the REST API and `/ws/events` with it, so the static files may be public.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.gateway import role

WEB = Path(__file__).with_name("web")


@role("public")
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB / "index.html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/static/", WEB, follow_symlinks=False)  # public: see _auth

"""The dashboard: static files from services/web/, served at `/` without a token.

The page itself holds no data; it asks for a token (kept in the browser's localStorage) and
then reads the REST API and `/ws/events` with it, so the static files may be public.
xterm.js comes from the npm registry (`npm ci` in services/web, which infra/deploy/dev runs);
`/vendor/<name>` serves the few files the page needs from services/web/node_modules.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.gateway.keys import role

WEB = Path(__file__).resolve().parent.parent / "web"  # services/web
NODE_MODULES = WEB / "node_modules"
VENDOR = {
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
}


@role("public")
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB / "index.html")


@role("public")
async def vendor(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in VENDOR:
        raise web.HTTPNotFound(text=f"no vendored file {name!r}; known: {', '.join(VENDOR)}")
    path = NODE_MODULES / VENDOR[name]
    if not path.is_file():
        raise web.HTTPNotFound(
            text=f"{path} is missing: run `npm ci` in {WEB} (infra/deploy/dev does it)"
        )
    return web.FileResponse(path)


def add_static_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/vendor/{name}", vendor)
    app.router.add_static("/static/", WEB, follow_symlinks=False)  # public: see auth.py

"""`/ws/term/{agent}`: a browser terminal onto the agent's pane, and nothing else of tmux.

Each connection asks the agent actor to `attach` (which records user.attached, so the person is
in `AgentView.users`, and gives a grouped session of their own), then follows the agent window's
pane through a tmux control-mode client of that session (infra/tmux_control.py): the gateway
runs on the agents' node. The last connection of a user to close sends `detach` (user.detached,
and the grouped session ends).

Why control mode and not `tmux attach` under a pty, as before: an ordinary client reads the
browser's bytes as keys, so `C-b :` then `run-shell` was a shell of the tmux server's user outside
the sandbox, and `switch-client` reached other agents' sessions; whatever key table or prefix
it is given, it stays a client that acts on keys. A control-mode client acts only on commands
written to its stdin, and only the gateway writes them: typed bytes become `send-keys -H` of
their hex values to the one pane (literal bytes on its pty, Ctrl-C, Esc, arrows and pastes
included; never a binding, a prompt or a session name), the pane's `%output` becomes the
browser's bytes (its colours and modes as the program wrote them), and `capture-pane` gives the
picture at the start, after a resize and after the browser fell behind. A pty bridge of the
pane's own output (`pipe-pane`) would need the same picture and input path, with less order
between them. The cost: the page shows the agent window only (no status line, no other
windows), and two operators of different sizes share one pane size (the latest to resize).

It is opened with the Authorization header or a ticket (`?ticket=`, from POST /api/tickets;
never the token), and closed (code 1008, with a sentence) as soon as that token is revoked.

Wire: binary frames are terminal bytes both ways (a viewer's input is dropped); a text frame
from the browser is JSON `{"type": "resize", "cols": C, "rows": R}` (an operator's sizes the
pane). The first frame to the browser is text JSON
`{"type": "hello", "user": ..., "readonly": ..., "session": ...}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from nats.errors import NoRespondersError

from infra.resend import request as resend_request
from infra.tmux_control import PaneTerminal
from schemas import replies, subjects
from schemas.errors import BadRequest, RemoteError, UnknownAgent
from schemas.wire import AgentReply
from services.gateway.keys import NC, holding, role, websocket, who
from services.gateway.openapi_fields import WHOLE, query
from services.gateway.routing import Route
from services.tokens import TokenEntry, allows

log = logging.getLogger(__name__)

PRESENCE = web.AppKey("term_presence", Counter)  # (agent, user) -> open terminals
ATTACH_TIMEOUT_S = 10.0
MAX_SIZE = 1000
WINDOW = "agent"  # the window whose pane the terminal follows


class _Resize(msgspec.Struct, frozen=True):
    type: str
    cols: int = 80
    rows: int = 24


def user_of(entry: TokenEntry) -> str:
    """The token's name as a tmux-safe user name (letters, digits, '_' and '-')."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", entry.name).strip("-")[:40] or entry.role


def _size(raw: str | None, default: int) -> int:
    try:
        return max(1, min(MAX_SIZE, int(raw))) if raw else default
    except ValueError:
        raise BadRequest(f"terminal size must be a whole number, not {raw!r}") from None


def socket_of(argv: list[str]) -> str:
    """The tmux socket name in the attach argv the actor answers (`... tmux -L <socket> ...`)."""
    if "-L" in argv[:-1]:
        return argv[argv.index("-L") + 1]
    raise RemoteError("bad_reply", "the agent's attach named no tmux socket")


async def _ask(request: web.Request, agent: str, fields: dict[str, Any]) -> AgentReply:
    """Send one command to the agent actor; its reply, or its error raised as a FleetError."""
    who_ = who(request)
    payload = msgspec.json.encode({"id": uuid.uuid4().hex, **fields, "by": f"token:{who_.name}"})
    try:
        subject = subjects.command(agent)
        msg = await resend_request(request.app[NC], subject, payload, ATTACH_TIMEOUT_S)
    except NoRespondersError as e:
        raise UnknownAgent(agent) from e
    except TimeoutError as e:
        raise RemoteError("timeout", f"agent {agent} did not answer {fields['type']}") from e
    return replies.decode_reply(msg.data, AgentReply, f"agent {agent}'s {fields['type']} reply")


async def _to_browser(term: PaneTerminal, ws: web.WebSocketResponse) -> None:
    while (data := await term.read()) is not None:
        await ws.send_bytes(data)
    await ws.close(message=b"the terminal ended")


async def _from_browser(term: PaneTerminal, ws: web.WebSocketResponse, readonly: bool) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            if not readonly:
                await term.type(msg.data)
        elif msg.type == WSMsgType.TEXT:
            try:
                control = msgspec.json.decode(msg.data, type=_Resize)
            except msgspec.DecodeError:
                log.debug("terminal: ignored a control message %r", msg.data[:80])
                continue
            if control.type == "resize" and not readonly:
                term.resize(control.cols, control.rows)


@websocket
@role("viewer")
async def ws_term(request: web.Request) -> web.StreamResponse:
    """Attach first (so a refusal is an HTTP error), then pump bytes until either side ends."""
    agent = subjects.token(request.match_info["agent"])
    entry = who(request)
    user = user_of(entry)
    readonly = not allows(entry.role, "operator") or request.query.get("readonly") == "1"
    cols = _size(request.query.get("cols"), 80)
    rows = _size(request.query.get("rows"), 24)
    reply = await _ask(request, agent, {"type": "attach", "user": user, "readonly": readonly})
    presence = request.app[PRESENCE]
    presence[agent, user] += 1
    try:
        socket, session = socket_of(reply.argv or []), str(reply.session)
        term = await PaneTerminal.open(
            socket, session, WINDOW, readonly=readonly, cols=cols, rows=rows
        )
        try:
            ws = web.WebSocketResponse(heartbeat=30.0)
            with holding(request, ws):  # closed at once if the token is revoked
                await _pump(request, ws, term, readonly, user, session)
        finally:
            await term.close()
    finally:
        await _leave(request, agent, user)
    return ws


async def _pump(
    request: web.Request,
    ws: web.WebSocketResponse,
    term: PaneTerminal,
    readonly: bool,
    user: str,
    session: object,
) -> None:
    """Answer the handshake, then carry bytes both ways until either side ends."""
    await ws.prepare(request)
    await ws.send_json({"type": "hello", "user": user, "readonly": readonly, "session": session})
    pumps = [
        asyncio.create_task(_to_browser(term, ws)),
        asyncio.create_task(_from_browser(term, ws, readonly)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await ws.close()


async def _leave(request: web.Request, agent: str, user: str) -> None:
    """The last terminal of `user` on `agent` closed: record user.detached."""
    presence = request.app[PRESENCE]
    presence[agent, user] -= 1
    if presence[agent, user] > 0:
        return
    del presence[agent, user]
    try:
        await _ask(request, agent, {"type": "detach", "user": user})
    except Exception as e:  # noqa: BLE001 (the agent may be gone; its log then lacks the detach)
        log.warning("terminal: detach of %s from %s not recorded: %s", user, agent, e)


def watch_terms(app: web.Application) -> None:
    """Who has a terminal open, for the last one's detach (its route is `term_routes`)."""
    app[PRESENCE] = Counter()


def term_routes() -> list[Route]:
    return [
        Route(
            "GET",
            "/ws/term/{agent}",
            ws_term,
            "WebSocket terminal onto the agent's pane (?cols=&rows=; viewers read only; "
            "?ticket= from POST /api/tickets)",
            status=101,
            content="",
            query=(
                query("cols", WHOLE, "columns"),
                query("rows", WHOLE, "rows"),
                query("readonly", {"type": "string"}, "1: an operator's terminal that only reads"),
            ),
        )
    ]

"""`/ws/term/{agent}`: a browser terminal onto an agent's tmux session.

Each connection asks the agent actor to `attach` (which records user.attached, so the person is
in `AgentView.users`, and gives a grouped session of their own with the argv that attaches to
it), then runs that argv under a pseudo-terminal in the gateway process: the gateway runs on
the agents' node. Operators type; a viewer's client is `attach-session -r` and its input is
dropped here as well. Several connections of one user share the user's grouped session; the
last one to close sends `detach` (user.detached, and the grouped session ends).

It is opened with the Authorization header or a ticket (`?ticket=`, from POST /api/tickets;
never the token), and closed (code 1008, with a sentence) as soon as that token is revoked.

Wire: binary frames are terminal bytes both ways; a text frame from the browser is JSON
`{"type": "resize", "cols": C, "rows": R}`. The first frame to the browser is text JSON
`{"type": "hello", "user": ..., "readonly": ..., "session": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import struct
import termios
import uuid
from collections import Counter
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from nats.errors import NoRespondersError

from infra.resend import request as resend_request
from schemas import subjects
from schemas.errors import BadRequest, RemoteError, UnknownAgent
from services.gateway import NC, holding, role, websocket, who
from services.tokens import TokenEntry, allows

log = logging.getLogger(__name__)

PRESENCE = web.AppKey("term_presence", Counter)  # (agent, user) -> open terminals
ATTACH_TIMEOUT_S = 10.0
READ_CHUNK = 65536
QUEUE_HIGH = 64  # output chunks waiting for a slow browser before the pty is left unread
MAX_SIZE = 1000


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


def set_size(fd: int, cols: int, rows: int) -> None:
    # struct winsize: rows, cols, xpixel, ypixel (unsigned short each)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _ask(request: web.Request, agent: str, fields: dict[str, Any]) -> dict[str, Any]:
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
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise RemoteError(error.get("code", "error"), error.get("message", "refused"))
    return reply


class Pty:
    """A child process on a fresh pseudo-terminal whose output is read into a queue."""

    def __init__(self, master: int, proc: asyncio.subprocess.Process) -> None:
        self.master = master
        self.proc = proc
        self.output: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self.resume()

    @classmethod
    async def spawn(cls, argv: list[str], cols: int, rows: int) -> Pty:
        master, slave = os.openpty()
        try:
            set_size(slave, cols, rows)
            os.set_blocking(master, False)
            # `setsid -c`: a new session whose controlling terminal is the pty, so the tmux
            # client gets SIGWINCH when the browser resizes.
            prefix = ["setsid", "-c"] if shutil.which("setsid") else []
            env = {**os.environ, "TERM": "xterm-256color"}
            env.pop("TMUX", None)
            proc = await asyncio.create_subprocess_exec(
                *prefix, *argv, stdin=slave, stdout=slave, stderr=slave, env=env
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return cls(master, proc)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: every process on the pty is gone
            data = b""
        if not data:
            self.pause()
            self.output.put_nowait(None)
            return
        self.output.put_nowait(data)
        if self.output.qsize() > QUEUE_HIGH:
            self.pause()  # let tmux hold the output until the browser catches up

    def pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.master)
            self._reading = False

    def resume(self) -> None:
        if not self._reading:
            self._loop.add_reader(self.master, self._on_readable)
            self._reading = True

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def resize(self, cols: int, rows: int) -> None:
        set_size(self.master, max(1, min(MAX_SIZE, cols)), max(1, min(MAX_SIZE, rows)))

    async def close(self) -> None:
        self.pause()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        os.close(self.master)


async def _to_browser(pty: Pty, ws: web.WebSocketResponse) -> None:
    while (data := await pty.output.get()) is not None:
        if pty.output.qsize() < QUEUE_HIGH // 2:
            pty.resume()
        await ws.send_bytes(data)
    await ws.close(message=b"the terminal ended")


async def _from_browser(pty: Pty, ws: web.WebSocketResponse, readonly: bool) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            if not readonly:
                await pty.write(msg.data)
        elif msg.type == WSMsgType.TEXT:
            try:
                control = msgspec.json.decode(msg.data, type=_Resize)
            except msgspec.DecodeError:
                log.debug("terminal: ignored a control message %r", msg.data[:80])
                continue
            if control.type == "resize":
                pty.resize(control.cols, control.rows)


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
    argv = list(reply["argv"])
    if readonly and "-r" not in argv:
        argv.append("-r")
    presence = request.app[PRESENCE]
    presence[agent, user] += 1
    try:
        pty = await Pty.spawn(argv, cols, rows)
        try:
            ws = web.WebSocketResponse(heartbeat=30.0)
            with holding(request, ws):  # closed at once if the token is revoked
                await _pump(request, ws, pty, readonly, user, reply.get("session"))
        finally:
            await pty.close()
    finally:
        await _leave(request, agent, user)
    return ws


async def _pump(
    request: web.Request,
    ws: web.WebSocketResponse,
    pty: Pty,
    readonly: bool,
    user: str,
    session: object,
) -> None:
    """Answer the handshake, then carry bytes both ways until either side ends."""
    await ws.prepare(request)
    await ws.send_json({"type": "hello", "user": user, "readonly": readonly, "session": session})
    pumps = [
        asyncio.create_task(_to_browser(pty, ws)),
        asyncio.create_task(_from_browser(pty, ws, readonly)),
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
    except Exception as e:  # the agent may be gone; its log then ends without the detach
        log.warning("terminal: detach of %s from %s not recorded: %s", user, agent, e)


def setup(app: web.Application) -> None:
    """The route itself is in `gateway_api.ROUTES` (so OpenAPI lists it)."""
    app[PRESENCE] = Counter()

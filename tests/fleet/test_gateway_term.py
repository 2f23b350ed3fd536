"""`/ws/term/{agent}` on a real fleet: an operator types and sees the output, a viewer only
watches, both are present in `AgentView.users` while connected and gone after; two operators
type into one pane at once; a terminal opened later starts with the screen as it is (colours
and cursor included); a resize sizes the pane; the dashboard's xterm.js answers none of the
program's terminal queries (tmux has, and a second answer would be typed into the pane). That
the terminal is the pane and nothing else of tmux is tests/security/test_term.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from services.gateway.static import NODE_MODULES, VENDOR
from tests.conftest import Fleet
from tests.fleet import cdp
from tests.fleet.gateway_fixtures import Gateway, get_json, run_gateway, spawn
from tests.fleet.helpers import until


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float) -> bytes:
    """Terminal bytes until `needle` shows up (or fail after `timeout` seconds)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never came; the terminal showed {seen[-400:]!r}"
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            msg = None
        assert msg is not None, f"{needle!r} never came; the terminal showed {seen[-400:]!r}"
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        seen += msg.data
    return seen


async def users(http: aiohttp.ClientSession, gw: Gateway, agent: str) -> list[str]:
    status, body = await get_json(http, f"{gw.url}/api/agents/{agent}", gw.headers("viewer"))
    assert status == 200, body
    return list(body["agent"]["users"])  # type: ignore[index]


async def wait_users(
    http: aiohttp.ClientSession, gw: Gateway, agent: str, want: set[str]
) -> list[str]:
    for _ in range(100):
        now = await users(http, gw, agent)
        if set(now) == want:
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"users of {agent} are {now}, not {want}")


@pytest.mark.slow
async def test_operators_type_viewers_watch_and_both_are_present(fleet: Fleet, repo: Path) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            await spawn(http, gw, repo, "t1")
            term = "/ws/term/t1?cols=100&rows=30"
            async with (
                http.ws_connect(await gw.ws_url(http, term, "operator")) as op,
                http.ws_connect(await gw.ws_url(http, term, "viewer")) as viewer,
            ):
                hello = await op.receive_json(timeout=10)
                assert hello["user"] == "test-operator" and hello["readonly"] is False
                assert (await viewer.receive_json(timeout=10))["readonly"] is True
                await wait_users(http, gw, "t1", {"test-operator", "test-viewer"})
                await viewer.send_bytes(b"echo viewer-$((6*7))\r")
                await op.send_bytes(b"echo operator-$((6*7))\r")
                await read_until(op, b"operator-42", 10)
                seen = await read_until(viewer, b"operator-42", 10)
                assert b"viewer-42" not in seen
                await op.send_str('{"type": "resize", "cols": 120, "rows": 40}')
                await viewer.send_str('{"type": "resize", "cols": 20, "rows": 5}')  # no effect
                await pane_size(fleet, hello["session"], "120x40")  # no status line: all pane
                await tty_size(op, b"40 120")
            await wait_users(http, gw, "t1", set())
            _, body = await get_json(http, gw.url + "/api/agents/t1/events", gw.headers("viewer"))
            types = [x["event"]["type"] for x in body["events"]]  # type: ignore[union-attr]
            assert types.count("user.attached") == 2 and types.count("user.detached") == 2
            ghost = await gw.ws_url(http, "/ws/term/ghost", "viewer")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ghost)
            assert refused.value.status == 404


async def tty_size(ws: aiohttp.ClientWebSocketResponse, want: bytes) -> None:
    """Ask the pane's shell for its terminal's size until it is `want` (tmux gives the pane's
    pty its new size a moment after the window's)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await ws.send_bytes(b"stty size; echo sized-$((6*7))\r")
        if want in await read_until(ws, b"sized-42", 10):
            return
    raise AssertionError(f"the pane's shell never saw the size {want!r}")


async def pane_size(fleet: Fleet, session: str, want: str) -> None:
    """Wait until the agent window's pane is `want` (WIDTHxHEIGHT), as tmux says."""
    argv = ["tmux", "-L", fleet.tmux_socket, "display-message", "-p", "-t", f"={session}:=agent"]

    async def size() -> bool:
        done = subprocess.run([*argv, "#{pane_width}x#{pane_height}"], capture_output=True)
        return done.stdout.decode().strip() == want

    await until(size, f"the agent pane of {session} to be {want}", 20)


@pytest.mark.slow
async def test_two_operators_type_and_a_late_terminal_starts_from_the_screen(
    fleet: Fleet, repo: Path
) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            await spawn(http, gw, repo, "t2")
            term = "/ws/term/t2?cols=90&rows=25"
            async with (
                http.ws_connect(await gw.ws_url(http, term, "operator")) as op,
                http.ws_connect(await gw.ws_url(http, term, "admin")) as admin,
            ):
                for ws in (op, admin):
                    hello = await ws.receive_json(timeout=10)
                    assert hello["readonly"] is False
                await wait_users(http, gw, "t2", {"test-operator", "test-admin"})
                await pane_size(fleet, hello["session"], "90x25")  # an operator's sizes it
                await op.send_bytes(b"printf '\\033[31mred-%s\\033[0m\\n' $((6*7))\r")
                for ws in (op, admin):  # live, to both, with its colour as printed
                    await read_until(ws, b"\x1b[31mred-42\x1b[0m", 10)
                await admin.send_bytes(b"for i in 1 2 3; do echo tick-$i; sleep 0.2; done\r")
                for tick in (b"tick-1", b"tick-2", b"tick-3"):
                    await read_until(op, tick, 10)  # each as it is printed
                await op.send_bytes(b"echo cursor-here-$((6*7)) && printf 'typed-'")
                await read_until(admin, b"typed-", 10)
                async with http.ws_connect(await gw.ws_url(http, term, "viewer")) as late:
                    await late.receive_json(timeout=10)
                    picture = await read_until(late, b"typed-", 10)
                    assert b"\x1b[31mred-42" in picture  # the screen as it is, in colour
                    assert b"\x1b[2J" in picture and b"\x1b[?25h" in picture  # cleared, cursor
            await wait_users(http, gw, "t2", set())


BUFFER_TEXT = """(() => { const b = term.buffer.active; const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out.join("\\n"); })()"""


@pytest.mark.slow
@pytest.mark.skipif(cdp.chromium() is None, reason="no chromium on PATH (infra/deploy/dev)")
@pytest.mark.skipif(
    not all((NODE_MODULES / f).is_file() for f in VENDOR.values()),
    reason=f"xterm.js is not installed: run `npm ci` in {NODE_MODULES.parent}",
)
async def test_the_dashboard_answers_no_terminal_query(
    fleet: Fleet, repo: Path, tmp_path: Path
) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with cdp.browser(tmp_path / "chromium") as page, aiohttp.ClientSession() as http:
            await spawn(http, gw, repo, "q1")
            await page.call("Page.navigate", url=gw.url + "/")
            await page.until("document.querySelector('#token-form') !== null")
            await page.js(f"localStorage.setItem('fleet-token', {json.dumps(gw.tokens['admin'])})")
            await page.call("Page.navigate", url=gw.url + "/")
            await page.until("document.querySelector('#conn')?.textContent === 'live'")
            await page.js("location.hash = '#/agent/q1'")
            await page.until("document.querySelector('#term-mode')?.textContent", 60)
            await page.until(f"{BUFFER_TEXT}.includes('$') || {BUFFER_TEXT}.includes('#')", 60)
            # Ask for device attributes (primary, secondary), the cursor position and the
            # background colour; once the page has shown the asking, type a Z, and show every
            # answer the pane was typed before it (ESC as E): the page's answers would be there.
            queries = r"printf '\033[c\033[>c\033[6n\033]11;?\007Q%sDONE' $((6*7))"
            read = r"""got=$(bash -c 'IFS= read -r -d Z x; printf %s "$x"')"""
            shown = r"""printf '%s' "$got" | tr '\033\007' EB"""
            line = f"stty raw -echo; {queries}; {read}; stty sane; {shown}; echo; echo END-$((6*7))"
            await page.js("term.focus()")
            await page.call("Input.insertText", text=line)
            enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
            await page.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **enter)
            await page.call("Input.dispatchKeyEvent", type="keyUp", **enter)
            await page.until(f"{BUFFER_TEXT}.includes('Q42DONE')", 30)
            await page.call("Input.insertText", text="Z")
            screen = await page.until(f"{BUFFER_TEXT}.includes('END-42') && {BUFFER_TEXT}", 30)
            answers = screen.rpartition("END-42")[0].rstrip().rpartition("\n")[2]
            assert answers.count("E[?1;2c") == 1 and answers.count("R") == 1, answers  # tmux's
            assert "E]11" not in answers, answers  # tmux 3.3 answers no colour query: nor we

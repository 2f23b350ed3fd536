"""`/ws/term/{agent}` on a real fleet: an operator types and sees the output, a viewer only
watches, both are present in `AgentView.users` while connected and gone after."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import Gateway, get_json, run_gateway, spawn


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
                for _ in range(20):  # the tmux client resizes the pane a moment later
                    await op.send_bytes(b"stty size\r")
                    with contextlib.suppress(AssertionError):
                        await read_until(op, b"39 120", 0.5)  # one row is the status line
                        break
                else:
                    raise AssertionError("the pane never took the browser's 120x40")
            await wait_users(http, gw, "t1", set())
            _, body = await get_json(http, gw.url + "/api/agents/t1/events", gw.headers("viewer"))
            types = [x["event"]["type"] for x in body["events"]]  # type: ignore[union-attr]
            assert types.count("user.attached") == 2 and types.count("user.detached") == 2
            ghost = await gw.ws_url(http, "/ws/term/ghost", "viewer")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ghost)
            assert refused.value.status == 404

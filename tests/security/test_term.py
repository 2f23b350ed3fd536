"""The operator terminal is a terminal onto the agent's pane and nothing else of tmux.

Against a real gateway and a real fleet (Ray, tmux, git), as an operator with a browser would
try it: tmux's prefix and bindings (`C-b :` then `run-shell`, `C-b s`, `C-b (`, `C-b d`), and raw
bytes that spell tmux commands (as they would be read by a control-mode client's stdin), typed
through `/ws/term/{id}`, reach the agent's pane as the bytes typed, and nothing more: no tmux
command runs (the files `run-shell` would touch never appear, the session list is the same),
and the operator's client is still on the same agent's session, still typing into its pane.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import get_json, run_gateway, spawn

GUARD_S = 60.0  # a loaded 2-core machine; every wait says what it waited for


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, what: str) -> bytes:
    """Terminal bytes until `needle` shows up; fail, saying `what` was awaited, after GUARD_S."""
    seen = b""
    deadline = time.monotonic() + GUARD_S
    while needle not in seen:
        left = deadline - time.monotonic()
        msg = None
        if left > 0:
            with contextlib.suppress(TimeoutError):
                msg = await ws.receive(timeout=left)
        assert msg is not None, f"{what} never came; the terminal showed {seen[-400:]!r}"
        assert msg.type == aiohttp.WSMsgType.BINARY, (what, msg)
        seen += msg.data
    return seen


def tmux(fleet: Fleet, *args: str) -> list[str]:
    done = subprocess.run(
        ["tmux", "-L", fleet.tmux_socket, *args], capture_output=True, text=True, check=True
    )
    return sorted(done.stdout.splitlines())


def attacks(marker: Path) -> list[bytes]:
    """What an operator would type to get out of the pane, one WebSocket frame each."""
    return [
        f"\x02:run-shell 'touch {marker}-prompt'\r".encode(),  # C-b : then a command
        b"\x02s",  # choose-tree: pick another session
        b"\x02(",  # switch-client -p
        b"\x02)",  # switch-client -n
        b"\x02:switch-client -t k2\r",
        b"\x02c",  # new-window: a shell outside the sandbox
        b"\x02d",  # detach
        # raw bytes that spell commands, as a control-mode client's stdin would read them
        f"\nrun-shell 'touch {marker}-raw'\n".encode(),
        b"switch-client -t =k2\nkill-server\n",
        f"%begin 1 1 1\nrun-shell 'touch {marker}-block'\n%end 1 1 1\n".encode(),
        # and the keys a person needs, which must arrive as they are
        b"\x03\x1b[A\x1bOB\x1b\x7f\x04\x00",
        "é ✓ ".encode() + b"\x1b[200~pasted\nlines\x1b[201~",
        bytes(range(256)),
    ]


@pytest.mark.slow
async def test_tmux_keys_and_commands_typed_into_the_terminal_are_only_bytes_in_the_pane(
    fleet: Fleet, repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "tmux-ran"
    typed = attacks(marker)
    keys = b"".join(typed)
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            await spawn(http, gw, repo, "k1")
            await spawn(http, gw, repo, "k2")  # a session to (not) switch to
            status, body = await get_json(http, gw.url + "/api/agents/k1", gw.headers("viewer"))
            assert status == 200, body
            worktree = Path(body["agent"]["worktree"])  # type: ignore[index]
            url = await gw.ws_url(http, "/ws/term/k1?cols=100&rows=30", "operator")
            async with http.ws_connect(url) as op:
                hello = await op.receive_json(timeout=GUARD_S)
                assert hello["readonly"] is False and hello["user"] == "test-operator"
                session = hello["session"]  # the operator's own, grouped with k1's
                sessions = tmux(fleet, "list-sessions", "-F", "#{session_name}")
                # The pane's shell reads exactly len(keys) raw bytes (no echo, no signals from
                # ^C, no line editing) into a file of its worktree, then says so.
                await op.send_bytes(
                    b"stty raw -echo; echo ready-$((6*7)); head -c %d > keys.bin; "
                    b"stty sane; echo read-$((6*7))\r" % len(keys)
                )
                await read_until(op, b"ready-42", "the raw reader's start in the pane")
                for frame in typed:
                    await op.send_bytes(frame)
                await read_until(op, b"read-42", "the end of the raw reader in the pane")
                assert (worktree / "keys.bin").read_bytes() == keys

                await op.send_bytes(b"echo agent-$FLEET_AGENT_ID-$((6*7))\r")
                await read_until(op, b"agent-k1-42", "the same agent's shell, after it all")
                assert not list(tmp_path.glob("tmux-ran*")), "a typed tmux command ran"
                assert tmux(fleet, "list-sessions", "-F", "#{session_name}") == sessions
                clients = tmux(fleet, "list-clients", "-F", "#{client_session}")
                assert clients == [session], clients
                windows = tmux(fleet, "list-windows", "-t", f"={session}", "-F", "#{window_name}")
                assert windows == ["agent", "monitor", "services"], windows  # no new window

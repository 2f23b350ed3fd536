"""Just enough of the Chrome DevTools Protocol to drive Debian's headless Chromium in tests.

No Playwright or Selenium: Chromium is started with `--remote-debugging-port=0`, writes the
port it chose to `<user-data-dir>/DevToolsActivePort`, and its first page is driven over one
WebSocket (aiohttp) with `Runtime.evaluate`, `Page.navigate` and `Input.*`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests import leftovers

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1000,800",
]
START_GUARD_S = 60.0  # a guard, not a measure: Chromium's start on a loaded machine


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page target: `call` a CDP method, `js` evaluates an expression (awaiting promises)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def js(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll `expression` until it is truthy; its value, or fail saying what it last was."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression!r} stayed {value!r} for {timeout} s")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def browser(folder: Path) -> AsyncIterator[Page]:
    """A headless Chromium with its profile and log in `folder`; its first page.

    Chromium makes a folder under TMPDIR (else /tmp) for its profile's SingletonSocket and
    leaves it there when it is stopped, so its TMPDIR is a folder of this run's own: short,
    as a socket path longer than 107 bytes makes Chromium abort, which one under a test's
    tmp_path is. At the end every process of the browser ends and both folders are removed
    (tests/leftovers.py checks that)."""
    binary = chromium()
    assert binary is not None
    profile = folder / "profile"
    profile.mkdir(parents=True, exist_ok=True)
    temp = leftovers.chromium_tmpdir()
    try:
        with (folder / "chromium.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
                stdout=log,
                stderr=log,
                env={**os.environ, "TMPDIR": str(temp)},
                start_new_session=True,  # its zygote and renderers: one group, ended together
            )
        try:
            async with aiohttp.ClientSession() as http:
                port = await _devtools_port(proc, folder)
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json()
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                async with http.ws_connect(url, max_msg_size=0) as ws:
                    page = Page(ws)
                    try:
                        yield page
                    finally:
                        await page.close()
        finally:
            await _end(proc)
    finally:
        shutil.rmtree(temp)
        shutil.rmtree(folder)


async def _devtools_port(proc: asyncio.subprocess.Process, folder: Path) -> int:
    """The port Chromium chose, once it has written it (it may take seconds when loaded)."""
    port_file = folder / "profile" / "DevToolsActivePort"
    deadline = time.monotonic() + START_GUARD_S
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.returncode is not None or time.monotonic() > deadline:
            up = proc.returncode is None
            how = "is still up" if up else f"exited with status {proc.returncode}"
            tail = (folder / "chromium.log").read_text(errors="replace").splitlines()[-5:]
            raise AssertionError(
                f"Chromium wrote no {port_file.name} within {START_GUARD_S:g} s and {how}; "
                f"its log ends: {' | '.join(tail)}"
            )
        await asyncio.sleep(0.05)
    return int(port_file.read_text().splitlines()[0])


async def _end(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, SIGKILL after 5 s, then whatever is left of its process group."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)

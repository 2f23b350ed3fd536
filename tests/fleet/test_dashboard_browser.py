"""The dashboard in real headless Chromium (Debian's `chromium`) on a real fleet: spawn from the
page, see the card change live as the agent is paused and resumed, then type into the agent's
terminal (xterm.js over `/ws/term`) and see the output, while the page shows who is present."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from services.gateway_web import NODE_MODULES, VENDOR
from tests.conftest import Fleet
from tests.fleet import cdp
from tests.fleet.gateway_fixtures import run_gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        cdp.chromium() is None,
        reason="no chromium on PATH: install Debian's `chromium` (infra/deploy/dev does, as root)",
    ),
    pytest.mark.skipif(
        not all((NODE_MODULES / f).is_file() for f in VENDOR.values()),
        reason=f"xterm.js is not installed: run `npm ci` in {NODE_MODULES.parent}",
    ),
]

TERMINAL_TEXT = """(() => { const b = term.buffer.active; const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out.join("\\n"); })()"""


def card(agent: str) -> str:
    return f"document.querySelector('#a-{agent} .lc')?.textContent"


async def test_spawn_watch_and_type_in_the_browser(
    fleet: Fleet, repo: Path, tmp_path: Path
) -> None:
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with cdp.browser(tmp_path / "chromium") as page, aiohttp.ClientSession() as http:
            await page.call("Page.navigate", url=gw.url + "/")
            await page.until("document.querySelector('#token-form') !== null")
            token = json.dumps(gw.tokens["admin"])
            await page.js(f"localStorage.setItem('fleet-token', {token})")
            await page.call("Page.navigate", url=gw.url + "/")
            await page.until("document.querySelector('#conn')?.textContent === 'live'")

            await page.js(
                f"(() => {{ const f = document.querySelector('#spawn'); f.repo.value = "
                f"{json.dumps(str(repo))}; f.name.value = 'b1'; f.requestSubmit(); }})()"
            )
            assert await page.until(f"{card('b1')} === 'RUNNING' && {card('b1')}", 60)
            for verb, shown in (("pause", "PAUSED"), ("resume", "RUNNING")):
                url = f"{gw.url}/api/agents/b1/{verb}"
                async with http.post(url, headers=gw.headers("operator")) as r:
                    assert r.status == 200, await r.text()
                await page.until(f"{card('b1')} === {shown!r}")  # live, over /ws/events

            await page.js("location.hash = '#/agent/b1'")
            mode = await page.until("document.querySelector('#term-mode')?.textContent")
            assert mode == "interactive, as test-admin"
            await page.until("document.querySelector('#users')?.textContent.includes('test-admin')")
            await page.until(f"{TERMINAL_TEXT}.includes('#') || {TERMINAL_TEXT}.includes('$')")
            await page.js("term.focus()")
            await page.call("Input.insertText", text="echo browser-$((6*7))")
            enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
            await page.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **enter)
            await page.call("Input.dispatchKeyEvent", type="keyUp", **enter)
            await page.until(f"{TERMINAL_TEXT}.includes('browser-42')")

            await page.js("location.hash = '#/'")  # leaving the page closes the terminal
            for _ in range(100):
                async with http.get(gw.url + "/api/agents/b1", headers=gw.headers("viewer")) as r:
                    users = (await r.json())["agent"]["users"]
                if not users:
                    break
                await page.js("new Promise((ok) => setTimeout(ok, 50))")
            assert users == []

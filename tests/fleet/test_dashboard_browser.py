"""The dashboard in real headless Chromium (Debian's `chromium`) on a real fleet and the real
health service: spawn from the page, see the card change live as the agent is paused and
resumed and its CPU/memory arrive, then type into the agent's terminal (xterm.js over
`/ws/term`) and see the output while the page shows who is present; take a checkpoint from the
page and see it listed, mail the agent and see the mail in its inbox, roll back with the
page's confirmation and see the rollback in the timeline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client

from services.gateway.static import NODE_MODULES, VENDOR
from services.health import HealthConfig, HealthService
from tests.conftest import Fleet
from tests.fleet import cdp
from tests.fleet.gateway_fixtures import run_gateway
from tests.fleet.health_fixtures import running_health

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


def card(agent: str, part: str = "lc") -> str:
    return f"document.querySelector('#a-{agent} .{part}')?.textContent"


def text(selector: str) -> str:
    return f"(document.querySelector({selector!r})?.textContent || '')"


def submit(form: str, **fields: str) -> str:
    """JS that fills the form's fields and submits it as a person would."""
    sets = "".join(f"f.elements[{k!r}].value = {json.dumps(v)}; " for k, v in fields.items())
    return f"(() => {{ const f = document.querySelector({form!r}); {sets}f.requestSubmit(); }})()"


PHONE_PX = 375
WIDE_ELEMENTS = """[...document.querySelectorAll('body *')]
  .filter((el) => el.getBoundingClientRect().right > PHONE_PX && !el.closest('.scroll'))
  .slice(0, 4)
  .map((el) => `${el.tagName}#${el.id}.${el.className} ${el.getBoundingClientRect().right}`)"""


async def assert_fits_a_phone(page: cdp.Page) -> None:
    """At 375 px wide nothing makes the page scroll sideways (wide tables scroll in place)."""
    # mobile=False: a mobile viewport would zoom out to fit a too-wide page and hide it.
    phone = {"width": PHONE_PX, "height": 740, "deviceScaleFactor": 1, "mobile": False}
    await page.call("Emulation.setDeviceMetricsOverride", **phone)
    try:
        await page.js("new Promise((ok) => requestAnimationFrame(() => ok()))")
        width = await page.js("document.documentElement.scrollWidth")
        wide = await page.js(WIDE_ELEMENTS.replace("PHONE_PX", str(PHONE_PX)))
        assert width <= PHONE_PX, f"the page is {width} px wide on a {PHONE_PX} px phone: {wide}"
    finally:
        await page.call("Emulation.clearDeviceMetricsOverride")


@pytest.fixture
async def health(nc: Client) -> AsyncIterator[HealthService]:
    """The real health service, sampling often, in the test's loop (as `fleet up` runs it)."""
    async with running_health(nc, HealthConfig(sample_period_s=0.3, tick_s=0.1)) as service:
        yield service


async def test_spawn_watch_and_type_in_the_browser(
    fleet: Fleet, repo: Path, tmp_path: Path, health: HealthService
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
            resources = await page.until(f"{card('b1', 'res')}")  # the health service's sample
            assert resources.startswith("cpu ") and resources.endswith(" MB"), resources
            await assert_fits_a_phone(page)

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

            await page.until(f"{text('#checkpoints')}.includes('no checkpoints yet')")
            await page.js(submit("#cp-form", label="from the page"))
            await page.until(f"{text('#checkpoints')}.includes('from the page')", 60)
            # the list follows the event over /ws/events, the result line the REST reply:
            # either may come first
            await page.until(f"{text('#result')}.includes('checkpoint #1')")

            await page.until(f"{text('#inbox')}.includes('no mail waiting')")
            await page.js(submit("#mail-form", body="hello from the page", priority="high"))
            await page.until(f"{text('#inbox')}.includes('hello from the page')")
            row = await page.js(text("#inbox tr.p-high"))
            assert "test-admin" in row, row  # sent from the token's name

            await page.js("document.querySelector('#checkpoints button.rollback').click()")
            await page.js("document.querySelector('#checkpoints button.confirm').click()")
            await page.until(f"{text('#timeline')}.includes('rolled_back')", 90)
            await assert_fits_a_phone(page)

            await page.js("location.hash = '#/'")  # leaving the page closes the terminal
            for _ in range(100):
                async with http.get(gw.url + "/api/agents/b1", headers=gw.headers("viewer")) as r:
                    users = (await r.json())["agent"]["users"]
                if not users:
                    break
                await page.js("new Promise((ok) => setTimeout(ok, 50))")
            assert users == []

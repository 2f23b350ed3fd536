"""The gateway's OpenAPI against a running fleet: schemathesis with every check finds nothing.

schemathesis reads `/openapi.json` from a real gateway on a real fleet (nats-server, Ray, the
supervisor, tmux, the health service, one live agent) and sends every operation what the
document allows and what it refuses: no answer may be a 5xx, carry a status or content type
the document does not list, break its reply's schema, or refuse a request the document calls
valid (and none may take one it calls invalid). Half of the agent ids it sends are the live
agent's (its config's dictionary), so commands reach a real actor, not only the unknown-agent
404. It runs as its CLI in a subprocess, so the gateway keeps serving on this test's event
loop, derandomized (`--generation-deterministic`: no seed, no example database) with a bounded
number of examples per operation, so each run sends the same requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from services.health import HealthService
from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import run_gateway, spawn

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = int(os.environ.get("FLEET_SCHEMATHESIS_EXAMPLES", "5"))
RUN_GUARD_S = 900.0  # a hung run fails here, with its output, before pytest's own timeout
# Past the gateway's own longest wait (a restart's 90 s), so a slow answer on a loaded machine
# is the gateway's to give (its reply, or a 504 with a sentence), not schemathesis's 10 s
# "Read timed out" (a loaded run saw one on a spawn).
REQUEST_TIMEOUT_S = 150.0
LIVE = "s1"
CONFIG = f"""
[dictionaries.agents]
values = ["{LIVE}"]

[parameters]
"path.agent" = {{ dictionary = "agents", probability = 0.5 }}
"""


def _argv(url: str, token: str, config: Path) -> list[str]:
    return [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        url + "/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        # A WebSocket route answers a plain GET with 400 and an upgrade with 101 and frames;
        # schemathesis sends plain requests only, so neither the upgrade nor what flows after
        # it can be checked this way (tests/fleet/test_gateway*.py open them with a client).
        "--exclude-path-regex",
        "^/ws/",
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        f"{REQUEST_TIMEOUT_S:g}",
        "--no-color",
    ]


def _failures(out: str) -> str:
    """The run's failures section (each failure's sentence and its curl), or all of it."""
    start = out.find("= FAILURES =")
    end = out.find("= WARNINGS =", start)
    return out[start:end] if start >= 0 else out[-20_000:]


@pytest.mark.slow
async def test_schemathesis_finds_nothing(
    fleet: Fleet, health: HealthService, repo: Path, tmp_path: Path
) -> None:
    assert SCHEMATHESIS.exists(), f"{SCHEMATHESIS} is missing: pip install -e '.[test]'"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            await spawn(http, gw, repo, LIVE)
            async with http.get(gw.url + "/openapi.json") as r:
                doc = json.loads(await r.read())
        websockets = [p for p in doc["paths"] if p.startswith("/ws/")]
        assert len(websockets) == 2, websockets
        proc = await asyncio.create_subprocess_exec(
            *_argv(gw.url, gw.tokens["admin"], config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its reports and caches land there, not in the repository
        )
        try:
            raw, _ = await asyncio.wait_for(proc.communicate(), RUN_GUARD_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        out = raw.decode(errors="replace")
        assert proc.returncode == 0, "schemathesis found failures:\n" + _failures(out)
        # every operation but the two WebSockets was tried, each with many requests
        counts = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", out)
        assert counts is not None, out[-5000:]
        selected, total, tested = map(int, counts.groups())
        assert selected == tested == total - len(websockets) >= 30, out[-5000:]
        cases = re.search(r"(\d+) generated, (\d+) passed", out)
        assert cases is not None and int(cases.group(2)) >= 10 * tested, out[-5000:]

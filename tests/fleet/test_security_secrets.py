"""Secrets, environment and paths of a real agent (real NATS, Ray, tmux, git, Landlock).

A template with a secret env var and a spawn-time secret: the values reach the agent's pane
but never the FLEET_EVENTS stream, `show` (what `fleet show --json` prints), the gateway's
GET /api/agents/{id} or the actor logs. The pane starts in the worktree, sees neither the
tmux server's (control plane's) environment nor paths its template does not grant.
"""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client

from infra import sandbox
from schemas import subjects
from schemas.templates import ApplyTemplate
from services import template_store
from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import get_json, run_gateway
from tests.fleet.helpers import command, spawn, until

TEMPLATE_SECRET = "tmpl-s3cret-value-1"
SPAWN_SECRET = "spawn-s3cret-value-2"
CONTROL_SECRET = "control-plane-s3cret-3"


@pytest.fixture
async def with_templates(nc: Client) -> AsyncIterator[None]:
    running = await template_store.start(nc)
    try:
        yield
    finally:
        await running.close()


def template(granted: Path) -> str:
    return (
        "name: secretive\n"
        "extends: shell\n"
        f"env: {{API_TOKEN: {TEMPLATE_SECRET}, PLAIN_SETTING: visible}}\n"
        f"permissions: {{paths: ['{granted}']}}\n"
    )


async def wait_file(path: Path, what: str) -> str:
    async def ready() -> bool:
        return path.exists() and path.read_text().endswith("END\n")

    await until(ready, what)
    return path.read_text()


async def test_secrets_reach_the_pane_but_not_the_log_show_or_gateway(
    fleet: Fleet, nc: Client, with_templates: None, repo: Path, tmp_path: Path
) -> None:
    granted, hidden = tmp_path / "granted", tmp_path / "hidden"
    for folder, text in ((granted, "granted-data"), (hidden, "hidden-data")):
        folder.mkdir()
        (folder / "data.txt").write_text(text)
    # The tmux server holds the control plane's environment; panes must not inherit it. It is
    # the fleet's server, under the run's TMUX_TMPDIR (tests/leftovers.py).
    bare = {"PATH": "/usr/bin:/bin", "TMUX_TMPDIR": os.environ["TMUX_TMPDIR"]}
    subprocess.run(
        ["tmux", "-L", fleet.tmux_socket, "new-session", "-d", "-s", "keeper",
         "-e", f"FLEET_TEST_SECRET={CONTROL_SECRET}", "sleep 600"],
        env={**bare, "FLEET_TEST_SECRET": CONTROL_SECRET},
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["tmux", "-L", fleet.tmux_socket, "set-environment", "-g", "FLEET_TEST_SECRET",
         CONTROL_SECRET],
        check=True,
    )  # fmt: skip
    applied = await nc.request(
        subjects.control("templates"),
        msgspec.json.encode(ApplyTemplate(source=template(granted), by="test")),
        5,
    )
    assert msgspec.json.decode(applied.data)["ok"], applied.data
    reply = await spawn(
        nc, str(repo), "sec1", template="secretive",
        env={"DB_PASSWORD": SPAWN_SECRET, "GRANTED_VAR": "granted-yes"},
    )  # fmt: skip
    assert reply["ok"], reply
    worktree = Path(reply["agent"]["worktree"])

    reads = f"cat {granted}/data.txt; echo; cat {hidden}/data.txt; echo"
    probe = "{ pwd; env; " + reads + "; } > out.txt 2>&1; echo END >> out.txt"
    await command(nc, "sec1", "send", text=probe)
    out = await wait_file(worktree / "out.txt", "the pane's report")
    lines = out.splitlines()
    assert Path(lines[0]).resolve() == worktree.resolve()  # starts in its worktree
    assert f"API_TOKEN={TEMPLATE_SECRET}" in lines  # secrets reach the process
    assert f"DB_PASSWORD={SPAWN_SECRET}" in lines
    assert "GRANTED_VAR=granted-yes" in lines and "PLAIN_SETTING=visible" in lines
    assert "FLEET_AGENT_ID=sec1" in lines
    assert CONTROL_SECRET not in out and "FLEET_TEST_SECRET" not in out
    if sandbox.landlock_abi() > 0:
        assert "granted-data" in out
        assert "hidden-data" not in out  # denied (Landlock) or not there at all (namespaces)
        assert "Permission denied" in out or "No such file or directory" in out

    secrets = (TEMPLATE_SECRET, SPAWN_SECRET)
    # The whole event stream, raw.
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    raw = b""
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw += (await js.get_msg(subjects.EVENTS_STREAM, seq)).data or b""
    assert b"sec1" in raw and b"***" in raw  # the template is there, redacted
    for secret in secrets:
        assert secret.encode() not in raw
    # `fleet show --json` prints the show reply.
    shown = msgspec.json.encode(await command(nc, "sec1", "show"))
    assert b"sec1" in shown and not any(s.encode() in shown for s in secrets)
    # The gateway's REST view.
    async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
        async with aiohttp.ClientSession() as http:
            status, body = await get_json(http, f"{gw.url}/api/agents/sec1", gw.headers("viewer"))
        assert status == 200, body
        served = msgspec.json.encode(body)
        assert b"sec1" in served and not any(s.encode() in served for s in secrets)
    # Whatever the actors and Ray logged.
    for log in glob.glob("/tmp/ray/session_latest/logs/*"):
        data = Path(log).read_bytes() if Path(log).is_file() else b""
        assert not any(s.encode() in data for s in secrets), log

    await command(nc, "sec1", "stop")
    await command(nc, "sec1", "remove", force=True)

    async def forgotten() -> bool:
        kv = await js.key_value("fleet_secrets")
        try:
            await kv.get("sec1")
        except Exception:
            return True
        return False

    await until(forgotten, "the agent's secrets deleted with it")

"""The templates service against a real nats-server: built-ins at start, versions in KV, diff,
validation on apply, and the `fleet template` commands as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from actors.supervisor.templatelookup import resolve_template
from infra.config import FleetState, Settings, now_utc, write_state
from infra.natsserver import NatsServer
from schemas import subjects
from services import template_store
from tests.fleet.helpers import request

WEB_V1 = "name: web\nextends: shell\nservices:\n  api: {command: [python3, -V], ports: [http]}\n"
WEB_V2 = WEB_V1.replace("python3, -V", "python3, -c, pass")


@pytest.fixture
async def service(nc: Client) -> AsyncIterator[template_store.TemplatesService]:
    running = await template_store.start(nc)
    yield running
    await running.close()


async def ask(nc: Client, **payload: Any) -> dict[str, Any]:
    return await request(nc, subjects.control("templates"), payload, 5)


async def test_builtins_are_stored_at_start_once(
    nc: Client, service: template_store.TemplatesService
) -> None:
    listed = await ask(nc, op="ls")
    names = {t["name"]: t for t in listed["templates"]}
    assert {"shell", "claude-code", "codex", "aider", "gemini", "web-demo"} <= set(names)
    assert names["web-demo"]["services"] == ["api", "worker"]
    assert all(t["version"] == 1 and t["builtin"] for t in names.values())
    assert await service.load_builtins() == []  # a second start changes nothing


async def test_apply_versions_show_and_diff(
    nc: Client, service: template_store.TemplatesService
) -> None:
    first = await ask(nc, op="apply", source=WEB_V1, file="web.yaml")
    assert first == {"ok": True, "name": "web", "version": 1, "changed": True}
    again = await ask(nc, op="apply", source=WEB_V1, file="web.yaml")
    assert again["version"] == 1 and again["changed"] is False
    second = await ask(nc, op="apply", source=WEB_V2, file="web.yaml")
    assert second["version"] == 2

    latest = await ask(nc, op="show", name="web")
    assert latest["version"] == 2 and latest["source"] == WEB_V2
    assert latest["template"]["services"]["api"]["command"] == ["python3", "-c", "pass"]
    assert latest["template"]["extends"] == "shell" and latest["parents"] == {"shell": 1}
    old = await ask(nc, op="show", name="web", version=1)
    assert old["source"] == WEB_V1

    diff = await ask(nc, op="diff", name="web")
    assert (diff["v1"], diff["v2"]) == (1, 2)
    assert "-  api: {command: [python3, -V]" in diff["diff"]
    assert "+  api: {command: [python3, -c, pass]" in diff["diff"]
    assert (await ask(nc, op="diff", name="web", v1=2, v2=2))["diff"] == ""

    missing = await ask(nc, op="show", name="web", version=7)
    assert missing["ok"] is False and "no version 7" in missing["error"]["message"]
    unknown = await ask(nc, op="show", name="nope")
    assert unknown["error"]["code"] == "unknown_template"


async def test_racing_applies_get_distinct_versions(
    nc: Client, service: template_store.TemplatesService
) -> None:
    sources = [WEB_V1.replace("-V", f"-c, 'print({i})'") for i in range(6)]
    replies = await asyncio.gather(*(ask(nc, op="apply", source=s, file="w.yaml") for s in sources))
    assert sorted(r["version"] for r in replies) == [1, 2, 3, 4, 5, 6]


async def test_an_invalid_apply_replies_with_the_sentence(
    nc: Client, service: template_store.TemplatesService
) -> None:
    bad = "name: web\nservices:\n  api:\n    command: x\n    readiness: {http: {port: [1]}}\n"
    reply = await ask(nc, op="apply", source=bad, file="web.yaml")
    assert reply["ok"] is False
    assert reply["error"] == {
        "code": "invalid_template",
        "message": "web.yaml: services.api.readiness.http.port: expected int or str, got array",
        "error_id": "",
    }
    assert (await ask(nc, op="show", name="web"))["error"]["code"] == "unknown_template"
    bogus = await ask(nc, op="remove", name="web")
    assert bogus["error"]["code"] == "invalid_field"
    assert "Invalid value 'remove' - at `$.op`" in bogus["error"]["message"]


async def test_a_spawn_resolves_from_the_service_else_the_builtin(nc: Client) -> None:
    template, version = await resolve_template(nc, "web-demo")
    assert (template.name, version) == ("web-demo", 0)  # no service: the built-in
    running = await template_store.start(nc)
    try:
        await ask(nc, op="apply", source=WEB_V1, file="web.yaml")
        template, version = await resolve_template(nc, "web")
        assert (template.name, version, list(template.services)) == ("web", 1, ["api"])
    finally:
        await running.close()


async def fleet_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_template_commands(
    nc: Client,
    service: template_store.TemplatesService,
    nats_server: NatsServer,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    state = FleetState(
        pid=os.getpid(), state_dir=str(state_dir), nats_url=nats_server.url, started_at=now_utc()
    )
    write_state(Settings.from_env().state_file, state)
    env = {**os.environ, "FLEET_STATE_DIR": str(state_dir)}
    web = tmp_path / "web.yaml"
    web.write_text(WEB_V1)

    assert await fleet_cli(env, "template", "apply", str(web)) == (
        0, "template web stored as version 1\n", "",
    )  # fmt: skip
    web.write_text(WEB_V2)
    code, out, _ = await fleet_cli(env, "template", "apply", str(web), "--json")
    assert code == 0 and json.loads(out)["version"] == 2

    code, out, _ = await fleet_cli(env, "template", "ls")
    assert code == 0 and out.splitlines()[0].split() == [
        "NAME",
        "VERSION",
        "SERVICES",
        "DESCRIPTION",
    ]
    assert any(line.split()[:3] == ["web", "2", "api"] for line in out.splitlines())

    code, out, _ = await fleet_cli(env, "template", "show", "web", "--version", "1")
    assert code == 0 and out == "# web version 1 (from web.yaml)\n" + WEB_V1

    code, out, _ = await fleet_cli(env, "template", "diff", "web")
    assert code == 0 and "--- web v1" in out and "+++ web v2" in out

    web.write_text("name: web\nservices:\n  api: {command: x, restart: {policy: maybe}}\n")
    code, out, err = await fleet_cli(env, "template", "apply", str(web))
    assert code == 2 and out == ""
    assert err == (
        "fleet: web.yaml: services.api.restart.policy: expected one of no, on-failure, always, "
        "got 'maybe'\n"
    )
    code, _, err = await fleet_cli(env, "template", "apply", str(tmp_path / "none.yaml"))
    assert code == 2 and "cannot read template" in err

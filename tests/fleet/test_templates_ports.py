"""A real fleet with the templates and ports services running beside it (in the test's own
event loop, as `fleet up` runs them): a spawned `web-demo` agent records its template version,
leases its ports, has them in its environment and `.env`, and gives them back when it stops."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from infra.eventstore import EventStore
from schemas import events as e
from schemas import subjects
from schemas.templates import decode_spec
from services import port_broker, template_store
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn, until
from tests.integration.test_ports_service import free_range


@pytest.fixture
async def span(nc: Client) -> AsyncIterator[tuple[int, int]]:
    """The templates and ports services, as `fleet up` starts them; the port range."""
    found = free_range(20)
    running_templates = await template_store.start(nc)
    running_ports = await port_broker.start(nc, found, reclaim_every_s=3600)
    try:
        yield found
    finally:
        await running_ports.close()
        await running_templates.close()


async def ask_ports(nc: Client, **payload: Any) -> dict[str, Any]:
    return await request(nc, subjects.control("ports"), payload, 5)


async def test_a_web_demo_agent_leases_its_ports_and_writes_dotenv(
    fleet: Fleet,
    nc: Client,
    span: tuple[int, int],
    repo: Path,
) -> None:
    reply = await spawn(nc, str(repo), "wd1", template="web-demo")
    assert reply["ok"], reply
    port = reply["agent"]["ports"]["api.http"]
    assert span[0] <= port <= span[1]
    leases = (await ask_ports(nc, op="ls", agent="wd1"))["leases"]
    assert [(r["port"], r["name"]) for r in leases] == [(port, "api.http")]

    log = [s.event for s in await EventStore(nc).read("wd1") if s.event is not None]
    created = next(ev for ev in log if isinstance(ev, e.AgentCreated))
    assert created.template == "web-demo" and created.template_version == 1
    spec = decode_spec(created.template_spec)
    assert spec is not None and list(spec.services) == ["api", "worker"]
    kinds = [type(ev) for ev in log]
    assert kinds.index(e.PortsLeased) < kinds.index(e.SessionStarted)

    worktree = Path(reply["agent"]["worktree"])
    dotenv = (worktree / ".env").read_text()
    assert f"PORT_API_HTTP={port}\n" in dotenv
    status = subprocess.run(  # the worktree is its agent's user's: git asks to be told so
        ["git", "-c", "safe.directory=*", "status", "--porcelain"],
        cwd=worktree, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert status.stdout == ""  # the generated .env is no noise in git status

    async def api_up() -> bool:
        found = (await command(nc, "wd1", "show"))["agent"]["services"]
        return found.get("api", {}).get("healthy") is True

    await until(api_up, "web-demo's api healthy on its leased port")
    shell_env = await command(nc, "wd1", "send", text="echo port=$PORT_API_HTTP")
    assert shell_env["ok"]

    stopped = await command(nc, "wd1", "stop")
    assert stopped["agent"]["lifecycle"] == "STOPPED" and stopped["agent"]["ports"] == {}
    log = [s.event for s in await EventStore(nc).read("wd1") if s.event is not None]
    released = [ev for ev in log if isinstance(ev, e.PortsReleased)]
    assert released and released[-1].ports == {"api.http": port}
    assert (await ask_ports(nc, op="ls", agent="wd1"))["leases"] == []

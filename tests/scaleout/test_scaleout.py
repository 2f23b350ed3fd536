"""Scale-out on a real multi-node Ray cluster (several raylets on this machine).

The cluster and `fleet up` run in their own processes (tests/scaleout/raynodes.py and the CLI),
so this module never touches the session's local Ray (tests/conftest.py `ray_cluster`); every
Ray process it starts is ended by the fixture. Nothing here is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.config import Settings
from schemas.ports import ListLeases
from schemas.wire import Fields
from services.cli.client import open_client
from tests.fleetcli import REPO, fleet_cli, private_up

TEMPLATE = """\
name: {name}
extends: shell
resources:
  ray: {{{resource}: 1}}
services:
  web:
    command: python3 -m http.server --bind 127.0.0.1 "$PORT"
    ports: [http]
    readiness:
      http: {{port: http, path: /}}
      period_s: 0.5
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A head offering resource `n1` and a worker node offering `n2`; torn down after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scaleout.raynodes", '{"n1": 1}', '{"n2": 1}'],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killed as one if it hangs
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        assert line, "the Ray cluster helper ended before it printed its address"
        yield json.loads(line)
    finally:
        proc.stdin.close()  # the helper shuts its cluster down
        try:
            proc.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def env(tmp_path: Path, cluster: dict[str, Any], nats_url: str) -> Iterator[dict[str, str]]:
    """fleetd pointed at existing clusters: the Ray cluster above and a NATS it did not start."""
    with private_up(
        tmp_path, FLEET_RAY_ADDRESS=cluster["address"], FLEET_NATS_URL=nats_url
    ) as values:
        yield values


def until(check: Any, what: str, timeout: float = 60.0, last: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}" + (f"; last seen: {last}" if last else ""))


def node_with(cluster: dict[str, Any], resource: str) -> str:
    return next(node for node, offered in cluster["nodes"].items() if resource in offered)


async def leases(env: dict[str, str]) -> list[dict[str, Any]]:
    async with open_client(Settings.from_env(env)) as client:
        reply = await client.control("ports", ListLeases(), Fields)
        found: list[dict[str, Any]] = reply["leases"]
        return found


def test_agents_land_on_the_nodes_with_their_resources_and_work_there(
    env: dict[str, str], cluster: dict[str, Any], repo: Path, tmp_path: Path
) -> None:
    up = fleet_cli(env, "up", "--detach")
    assert up.returncode == 0, up.stderr
    status = json.loads(fleet_cli(env, "status", "--json").stdout)
    assert status["nats_url"] == env["FLEET_NATS_URL"] and status["nats_pid"] is None
    assert status["ray_address"] == cluster["address"]
    for name, resource in (("on-n1", "n1"), ("on-n2", "n2"), ("on-n3", "n3")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(TEMPLATE.format(name=name, resource=resource))
        applied = fleet_cli(env, "template", "apply", str(path))
        assert applied.returncode == 0, applied.stderr
    where = {}
    for agent, template in (("a1", "on-n1"), ("a2", "on-n2")):
        spawned = fleet_cli(
            env, "spawn", "--repo", str(repo), "--name", agent, "--template", template
        )
        assert spawned.returncode == 0, spawned.stderr + spawned.stdout
        shown = json.loads(fleet_cli(env, "show", agent, "--json").stdout)
        assert shown["lifecycle"] == "RUNNING"
        where[agent] = shown["actor"]["node"]
    assert where == {"a1": node_with(cluster, "n1"), "a2": node_with(cluster, "n2")}

    for agent in where:  # a command round trip through each node's agent and its tmux pane
        assert fleet_cli(env, "send", agent, f"echo round-trip-{agent}").returncode == 0
        until(
            lambda a=agent: f"round-trip-{a}\n" in fleet_cli(env, "logs", a).stdout + "\n",
            f"{agent} echoes",
        )

    held = asyncio.run(leases(env))
    holders = {lease["agent"]: lease["holder"] for lease in held}
    # Each lease was bound and granted by the ports service of the agent's own node.
    assert {a: h.split("-")[0] for a, h in holders.items()} == {
        a: node[:12] for a, node in where.items()
    }

    last: list[str] = []

    def healthy(agent: str) -> dict[str, Any] | None:
        got = fleet_cli(env, "health", agent, "--json")
        last[:] = [agent, got.stdout, got.stderr]
        report = json.loads(got.stdout) if got.returncode == 0 else {}
        web = report.get("services", {}).get("web", {})
        return report if web.get("healthy") is True else None

    for agent, node in where.items():  # probed by the health service of that node
        report = until(lambda a=agent: healthy(a), f"{agent}'s web is healthy", last=last)
        assert report["node"] == node

    refused = fleet_cli(env, "spawn", "--repo", str(repo), "--name", "a3", "--template", "on-n3")
    assert refused.returncode == 2
    assert "cannot place agent a3 (it asks Ray for n3=1)" in refused.stderr
    assert "no Ray node has that much" in refused.stderr
    for agent in where:
        assert fleet_cli(env, "stop", agent).returncode == 0

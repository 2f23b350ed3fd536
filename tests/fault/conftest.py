"""Fixtures of the fault tests: the shared ones (a nats-server, a fleet on Ray, a NATS client
onto it, a git repository) and a 3-node JetStream cluster of real nats-server processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from infra import raycluster
from infra.natscluster import NatsCluster
from tests.fleet.conftest import nc, repo

__all__ = ["nats_cluster", "nc", "repo", "up_env"]


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed nats-servers with JetStream, each on its own store; stopped afterwards."""
    with NatsCluster.start(tmp_path / "cluster", size=3) as cluster:
        yield cluster


# -- `fleet up` as a user runs it: a detached subprocess with its own state dir and Ray ---------

REPO = Path(__file__).resolve().parents[2]
GUARD_S = 180.0  # only stops a hung child from hanging the suite; nothing is timed


def fleet_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )


def fleet_state(env: dict[str, str]) -> dict[str, Any]:
    """The state file `fleet up` wrote (what `fleet status --json` prints, without a process)."""
    found: dict[str, Any] = json.loads((Path(env["FLEET_STATE_DIR"]) / "fleet.json").read_text())
    return found


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a private `fleet up`; whatever it left running is stopped afterwards
    (the `fleet up` process, the local Ray daemon a crashed one leaves, then the tmux server
    of its agents)."""
    socket = f"fleet-fault-{os.getpid()}-{tmp_path.name[-12:]}"
    values = {
        **os.environ,
        "FLEET_STATE_DIR": str(tmp_path / "state"),
        "FLEET_TMUX_SOCKET": socket,
        "FLEET_POOL_SIZE": "0",
        "FLEET_GATEWAY_PORT": "0",
    }
    values.pop("FLEET_NATS_URL", None)
    values.pop("FLEET_RAY_ADDRESS", None)
    yield values
    state = tmp_path / "state" / "fleet.json"
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGINT)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(60)
    daemon = raycluster.read_daemon(tmp_path / "state")
    if daemon is not None:
        raycluster.stop_daemon(tmp_path / "state", daemon)
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)

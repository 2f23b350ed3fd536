"""A restarted `fleet up` re-adopts every agent: real processes, real signals, real Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
GUARD_S = 180.0  # only stops a hung child from hanging the suite; nothing is timed


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    socket = f"fleet-up-{os.getpid()}-{tmp_path.name[-12:]}"
    values = {
        **os.environ,
        "FLEET_STATE_DIR": str(tmp_path / "state"),
        "FLEET_TMUX_SOCKET": socket,
        "FLEET_POOL_SIZE": "0",
    }
    values.pop("FLEET_NATS_URL", None)
    values.pop("FLEET_RAY_ADDRESS", None)
    yield values
    state = tmp_path / "state" / "fleet.json"
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGINT)
            psutil.Process(pid).wait(60)
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


def fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )


def down(env: dict[str, str]) -> None:
    state = json.loads((Path(env["FLEET_STATE_DIR"]) / "fleet.json").read_text())
    os.kill(state["pid"], signal.SIGINT)
    psutil.Process(state["pid"]).wait(GUARD_S)


def test_a_restarted_fleet_up_readopts_the_agent(env: dict[str, str], repo: Path) -> None:
    assert fleet(env, "up", "--detach").returncode == 0
    spawned = fleet(env, "spawn", "--repo", str(repo), "--name", "a1", "--json")
    assert spawned.returncode == 0, spawned.stderr
    first = json.loads(spawned.stdout)
    down(env)
    kept = subprocess.run(
        ["tmux", "-L", env["FLEET_TMUX_SOCKET"], "ls"], capture_output=True, text=True
    )
    assert kept.stdout.startswith("fleet-a1:"), "the session must outlive the control plane"
    up = fleet(env, "up", "--detach")
    assert up.returncode == 0, up.stderr
    shown = json.loads(fleet(env, "show", "a1", "--json").stdout)
    assert shown["lifecycle"] == "RUNNING"
    assert shown["tmux"] == first["tmux"]
    assert shown["actor"]["pid"] != first["actor"]["pid"]
    status = json.loads(fleet(env, "status", "--json").stdout)
    assert {"nats_url", "nats_pid", "ray_address", "state_dir"} <= status.keys()
    assert fleet(env, "stop", "a1").returncode == 0

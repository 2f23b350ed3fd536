"""A restarted `fleet up` re-adopts every agent: real processes, real signals, real Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil

from tests.fleetcli import GUARD_S, fleet_cli, fleet_state


def down(env: dict[str, str]) -> None:
    pid = fleet_state(env)["pid"]
    os.kill(pid, signal.SIGINT)
    psutil.Process(pid).wait(GUARD_S)


def test_a_restarted_fleet_up_readopts_the_agent(up_env: dict[str, str], repo: Path) -> None:
    env = up_env
    assert fleet_cli(env, "up", "--detach").returncode == 0
    spawned = fleet_cli(env, "spawn", "--repo", str(repo), "--name", "a1", "--json")
    assert spawned.returncode == 0, spawned.stderr
    first = json.loads(spawned.stdout)
    down(env)
    kept = subprocess.run(
        ["tmux", "-L", env["FLEET_TMUX_SOCKET"], "ls"], capture_output=True, text=True
    )
    assert kept.stdout.startswith("fleet-a1:"), "the session must outlive the control plane"
    up = fleet_cli(env, "up", "--detach")
    assert up.returncode == 0, up.stderr
    shown = json.loads(fleet_cli(env, "show", "a1", "--json").stdout)
    assert shown["lifecycle"] == "RUNNING"
    assert shown["tmux"] == first["tmux"]
    assert shown["actor"]["pid"] != first["actor"]["pid"]
    status = json.loads(fleet_cli(env, "status", "--json").stdout)
    assert {"nats_url", "nats_pid", "ray_address", "state_dir"} <= status.keys()
    assert fleet_cli(env, "stop", "a1").returncode == 0

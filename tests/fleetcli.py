"""The `fleet` CLI as a user runs it (a subprocess of this checkout), and the environment of a
private `fleet up` for it to run against, with whatever that left running stopped afterwards."""

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

from infra import raycluster

REPO = Path(__file__).resolve().parents[1]
GUARD_S = 180.0  # only stops a hung child from hanging the suite; nothing is timed


def fleet_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )


def fleet_state(env: dict[str, str]) -> dict[str, Any]:
    """The state file `fleet up` wrote (what `fleet status --json` prints, without a process)."""
    found: dict[str, Any] = json.loads((Path(env["FLEET_STATE_DIR"]) / "fleet.json").read_text())
    return found


@contextlib.contextmanager
def private_up(tmp_path: Path, **settings: str) -> Iterator[dict[str, str]]:
    """The environment of a private `fleet up`: its own state dir and tmux socket, no warm pool,
    any free gateway port (other fleets may run on this machine) and none of the caller's NATS
    or Ray; `settings` add variables, such as an existing NATS or Ray to use instead.

    On exit whatever it left running is stopped: the `fleet up` process (interrupted, as a
    person would), the local Ray daemon a crashed one leaves, then the tmux server of its
    agents. A `fleet up` that does not end within a minute of its interrupt is an error."""
    state_dir = tmp_path / "state"
    socket = f"fleet-up-{os.getpid()}-{tmp_path.name[-12:]}"
    env = {
        **os.environ,
        "FLEET_STATE_DIR": str(state_dir),
        "FLEET_TMUX_SOCKET": socket,
        "FLEET_POOL_SIZE": "0",
        "FLEET_GATEWAY_PORT": "0",
    }
    env.pop("FLEET_NATS_URL", None)
    env.pop("FLEET_RAY_ADDRESS", None)
    env.update(settings)
    try:
        yield env
    finally:
        try:
            _interrupt(state_dir)
        finally:
            daemon = raycluster.read_daemon(state_dir)
            if daemon is not None:
                raycluster.stop_daemon(state_dir, daemon)
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


def _interrupt(state_dir: Path) -> None:
    """Ctrl-C to the `fleet up` the state file names, and wait for it to end."""
    state = state_dir / "fleet.json"
    if not state.exists():
        return
    with contextlib.suppress(psutil.NoSuchProcess):  # it ended (or crashed) by itself
        proc = psutil.Process(json.loads(state.read_text())["pid"])
        proc.send_signal(signal.SIGINT)
        proc.wait(60)

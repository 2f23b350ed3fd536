"""What every benchmark group shares: the JSON line format, a fresh server (alone, or with a
local Ray for the groups that run actors), a git repository, percentiles."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from nats.aio.client import Client

from infra import raycluster
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer

_results = sys.stdout


def keep_stdout_for_results() -> None:
    """From now on only `emit` writes to stdout; anything else (Ray's raylet warnings, which
    it prints on the driver's stdout) goes to stderr, so stdout stays JSON lines."""
    global _results
    _results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def emit(metric: str, value: float, unit: str, floor: float, note: str = "") -> None:
    """Print one result line: `ratio` is value/floor, so its meaning follows the unit."""
    line = {
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "floor": round(floor, 3),
        "ratio": round(value / floor, 3) if floor else None,
    }
    if note:
        line["note"] = note
    print(json.dumps(line), file=_results, flush=True)


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


@asynccontextmanager
async def fresh_nats() -> AsyncIterator[Client]:
    """A new embedded nats-server on a temporary store, with fleetd's streams."""
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        server = NatsServer.start(Path(tmp) / "nats")
        try:
            nc = await connect(server.url)
            try:
                await ensure_streams(nc.jetstream())
                yield nc
            finally:
                await nc.close()
        finally:
            server.stop()


@asynccontextmanager
async def nats_and_ray(root: Path, *sockets: str) -> AsyncIterator[NatsServer]:
    """An embedded nats-server on root/nats with fleetd's streams, and a local Ray; afterwards
    Ray, the tmux servers on `sockets` (the agents' and the floors'), then the server stop."""
    server = NatsServer.start(root / "nats")
    try:
        raycluster.start(None)
        try:
            nc = await connect(server.url)
            try:
                await ensure_streams(nc.jetstream())
            finally:
                await nc.close()
            yield server
        finally:
            raycluster.stop()
            for socket in sockets:
                subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    finally:
        server.stop()


def git_repo(root: Path, fill: Callable[[Path], object]) -> Path:
    """A repository at root/repo on branch main: what `fill` writes into it, in one commit."""
    repo = root / "repo"
    repo.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "b@example.com"],
        ["config", "user.name", "Bench"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    fill(repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=repo, check=True)
    return repo


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays JSON lines."""
    print(message, file=sys.stderr, flush=True)

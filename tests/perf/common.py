"""What every benchmark group shares: the JSON line format, a fresh server, percentiles."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from nats.aio.client import Client

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


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays JSON lines."""
    print(message, file=sys.stderr, flush=True)

"""Fixtures shared by every test folder: a real nats-server per test and a private state dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a fresh store; tests may `.kill()` and `.restart()`."""
    server = NatsServer.start(tmp_path / "nats", port=None)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private FLEET_STATE_DIR, so no test touches the user's real state."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("FLEET_STATE_DIR", str(path))
    for name in ("FLEET_NATS_URL", "FLEET_RAY_ADDRESS", "FLEET_GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    return path

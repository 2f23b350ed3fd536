"""Fixtures of the fleet tests: a NATS client onto the test fleet, and a git repository."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from infra.nats import connect
from tests.conftest import Fleet


@pytest.fixture
async def nc(fleet: Fleet) -> AsyncIterator[Client]:
    client = await connect(fleet.nats_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit: a README and a .gitignore that ignores *.log."""
    path = tmp_path / "repo"
    path.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "t@example.com"],
        ["config", "user.name", "Test"],
    ):
        subprocess.run(["git", *args], cwd=path, check=True)
    (path / "README.md").write_text("hello\n")
    (path / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=path, check=True)
    return path

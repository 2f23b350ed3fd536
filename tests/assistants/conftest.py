"""The real assistants' tests use the fleet fixtures of tests/fleet (a real NATS, Ray, tmux and
git) and the assistants installed once into a cache folder (tests/assistants/install.py)."""

from __future__ import annotations

import pytest

from tests.assistants.install import Installs, install
from tests.fleet.conftest import gw, health, http, nc

__all__ = ["assistants", "gw", "health", "http", "nc"]


@pytest.fixture(scope="session")
def assistants() -> Installs:
    """Claude Code, Codex, Gemini CLI and Aider, installed the usual ways (skipped, saying
    why, only where npm or PyPI cannot be reached)."""
    return install()

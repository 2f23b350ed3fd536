"""Fixtures of the fleet tests: a NATS client onto the test fleet, the health service on it, and
a gateway with an HTTP session (the git repository is tests/conftest.py's `repo`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from nats.aio.client import Client

from infra.nats import connect
from services.health import HealthService
from tests.conftest import Fleet
from tests.fleet.gateway_fixtures import Gateway, run_gateway
from tests.fleet.health_fixtures import running_health


@pytest.fixture
async def nc(fleet: Fleet) -> AsyncIterator[Client]:
    client = await connect(fleet.nats_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def health(nc: Client) -> AsyncIterator[HealthService]:
    """The health service on the test fleet, sampling often (`FAST`)."""
    async with running_health(nc) as service:
        yield service


@pytest.fixture
async def gw(nats_url: str, state_dir: Path) -> AsyncIterator[Gateway]:
    """A gateway on the test's nats-server (no fleet), with a token per role."""
    async for g in run_gateway(nats_url, state_dir):
        yield g


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session

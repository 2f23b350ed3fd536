"""Fixtures of the fleet tests: a NATS client onto the test fleet and the health service on it
(the git repository is tests/conftest.py's `repo`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from infra.nats import connect
from services.health import HealthService
from tests.conftest import Fleet
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

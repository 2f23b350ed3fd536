"""Fixtures of the fleet tests: a NATS client onto the test fleet (the git repository is
tests/conftest.py's `repo`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

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

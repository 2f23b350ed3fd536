"""Fixtures of the fault tests: the shared ones (a nats-server, a fleet on Ray, a NATS client
onto it and the health service on that, a git repository, a private `fleet up`) and a 3-node
JetStream cluster of real nats-server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.natscluster import NatsCluster
from tests.fleet.conftest import health, nc

__all__ = ["health", "nats_cluster", "nc"]


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed nats-servers with JetStream, each on its own store; stopped afterwards."""
    with NatsCluster.start(tmp_path / "cluster", size=3) as cluster:
        yield cluster

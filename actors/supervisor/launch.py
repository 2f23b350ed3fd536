"""The supervisor's one detached Ray actor, made (or found) by `fleet up`."""

from __future__ import annotations

from typing import Any

import ray

from actors.names import SUPERVISOR
from actors.supervisor.actor import Supervisor
from actors.supervisor.config import FleetConfig


def start(config: FleetConfig) -> Any:
    """Create (or find) the detached supervisor actor; Ray restarts it if its worker dies."""
    remote: Any = ray.remote(Supervisor)
    return remote.options(
        name=SUPERVISOR,
        namespace=config.agent.namespace,
        lifetime="detached",
        max_restarts=-1,
        max_concurrency=1000,
        num_cpus=0,
        get_if_exists=True,
    ).remote(config)

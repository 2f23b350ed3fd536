"""Ray bootstrap: join `FLEET_RAY_ADDRESS`, or start a local Ray owned by this process.

A local Ray lives as long as the process that started it (`fleet up`); agents' tmux sessions
live on without it and are re-adopted by the next `fleet up`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

NAMESPACE = "fleetd"


def start(address: str | None, *, num_cpus: int | None = None) -> str:
    """Connect the driver to Ray; return the cluster's address (GCS host:port)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; no token file in $HOME
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    context = ray.init(
        # "local" starts a Ray of our own even when a `ray start` cluster is on this machine
        # (ray.init(None) would join it, through /tmp/ray/ray_current_cluster).
        address=address or "local",
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        num_cpus=num_cpus if address is None else None,
    )
    info: dict[str, Any] = getattr(context, "address_info", {})
    return str(info.get("gcs_address") or info.get("address") or "")


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()

"""The services of each Ray node: ports (a lease's bind check) and health (probes, samples).

A port is free or not on one machine, and a probe of `127.0.0.1:<port>` reaches one machine, so
both services must run on the node of the agents they serve. `fleet up` runs them for its own
node; on a cluster (`FLEET_RAY_ADDRESS`) every other live node gets a detached actor
`fleet:node:<node id>`, pinned there by a hard node affinity, running the same two: the ports
service answers `fleet.ctl.ports.<node>` (what that node's agents ask) and the health service
watches only agents whose actor runs on that node. Nodes that join later get theirs within
`period_s`; a node actor whose worker dies is restarted by Ray on the same node.

Only `fleet up`'s own ports service answers the fleet-wide `fleet.ctl.ports` (listings, and
agents of a node with no ports service yet) and follows the events to release leases; KV's
compare-and-set keeps one port from being leased twice whichever instance leases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import infra.nats
from infra import fleetkey, priority
from infra.config import Settings
from schemas.errors import FleetError
from services import health, port_broker

log = logging.getLogger(__name__)

NODE_PREFIX = "fleet:node:"
NAMESPACE = "fleetd"
READY_TIMEOUT_S = 60.0


class NodeServices:
    """A Ray actor: the ports and health services of the node it is pinned to."""

    async def __init__(  # type: ignore[misc]  # Ray runs async constructors
        self, nats_url: str, port_range: tuple[int, int], node: str, mac_key: bytes | None = None
    ) -> None:
        priority.favour_this_thread()  # commands before Ray's own timers
        runs_on = ray.get_runtime_context().get_node_id()
        if runs_on != node:  # a lease's bind check elsewhere would be wrong: refuse to serve
            raise FleetError(f"the services of Ray node {node} started on node {runs_on}")
        self.node_id = node
        self.nc = await infra.nats.connect(nats_url, name=f"fleet-node-{node[:12]}")
        self.ports = await port_broker.start(
            self.nc, port_range, node=node, fleet_wide=False, follow=False
        )
        self.stop = asyncio.Event()
        config = health.HealthConfig(node=node, mac_key=mac_key)  # verifies what it reads
        self.health = asyncio.get_running_loop().create_task(health.run(self.nc, self.stop, config))

    def where(self) -> dict[str, str]:
        """The node it was asked to serve and the node it runs on (the same, by its pinning)."""
        return {"serves": self.node_id, "runs_on": ray.get_runtime_context().get_node_id()}

    async def close(self) -> None:
        self.stop.set()
        await self.ports.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.health, READY_TIMEOUT_S)
        await self.nc.close()


def this_node(settings: Settings) -> str:
    """The Ray node id of this process on a cluster; "" for a local Ray (one node, no filter)."""
    return str(ray.get_runtime_context().get_node_id()) if settings.ray_address else ""


def live_nodes() -> list[str]:
    nodes: list[dict[str, object]] = ray.nodes()  # type: ignore[no-untyped-call]  # Ray's
    return [str(n["NodeID"]) for n in nodes if n.get("Alive")]


def node_actor(
    nats_url: str, port_range: tuple[int, int], node: str, mac_key: bytes | None = None
) -> Any:
    """Create (or find) the node's actor; pinned with soft=False, so it never runs elsewhere."""
    remote: Any = ray.remote(NodeServices)
    return remote.options(
        name=NODE_PREFIX + node,
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
    ).remote(nats_url, port_range, node, mac_key)


class NodeKeeper:
    """Gives every live node but `own` its services actor, now and as nodes join."""

    def __init__(self, nats_url: str, port_range: tuple[int, int], own: str) -> None:
        self.nats_url, self.port_range, self.own = nats_url, port_range, own
        self.mac_key: bytes | None = None  # the fleet key, for the nodes' health services
        self.actors: dict[str, Any] = {}

    async def ensure(self) -> list[str]:
        """Start the actors of nodes that have none; wait until each serves. The new nodes."""
        new = [n for n in await asyncio.to_thread(live_nodes) if n != self.own]
        new = [n for n in new if n not in self.actors]
        for node in new:
            self.actors[node] = node_actor(self.nats_url, self.port_range, node, self.mac_key)
        await asyncio.gather(*(self._ready(n) for n in new))
        return new

    async def _ready(self, node: str) -> None:
        try:
            await asyncio.wait_for(self.actors[node].where.remote(), READY_TIMEOUT_S)
        except (TimeoutError, ray.exceptions.RayError) as err:
            log.warning("the services of node %s did not start (%s); retrying later", node, err)
            self.actors.pop(node, None)

    async def run(self, stop: asyncio.Event, period_s: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)
            try:
                await self.ensure()
            except ray.exceptions.RayError:
                log.exception("looking for new Ray nodes failed; trying again later")

    async def close(self) -> None:
        """End the node actors (a clean stop of `fleet up`; after a kill -9 they live on and
        the next `fleet up` finds them by name)."""
        for actor in self.actors.values():
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                await asyncio.wait_for(actor.close.remote(), READY_TIMEOUT_S)
            ray.kill(actor, no_restart=True)
        self.actors.clear()


async def start(
    settings: Settings, nats_url: str, stack: AsyncExitStack, period_s: float = 5.0
) -> list[str]:
    """On a Ray cluster, the services of every other node (stopped when the stack unwinds);
    the nodes served. Nothing on a local Ray, whose only node is `fleet up`'s own."""
    if not settings.ray_address:
        return []
    keeper = NodeKeeper(nats_url, settings.port_range, this_node(settings))
    keeper.mac_key = fleetkey.load_or_create(settings.state_dir)
    served = await keeper.ensure()
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop, period_s))

    async def close() -> None:
        stop.set()
        await task
        await keeper.close()

    stack.push_async_callback(close)
    log.info("services started on %d other Ray node(s)", len(served))
    return served

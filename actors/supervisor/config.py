"""The fleet's settings for the supervisor, and how it makes and finds agents' Ray actors."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util import list_named_actors

from actors.agent import AgentActor, AgentConfig
from actors.names import AGENT_PREFIX, SLOT_PREFIX


@dataclass(frozen=True)
class FleetConfig:
    agent: AgentConfig
    pool_size: int = 2
    max_agents: int = 200
    agent_options: dict[str, Any] = field(default_factory=dict)  # e.g. Ray resources


@functools.cache
def agent_actor_class() -> Any:
    """The Ray actor class of agents, made once: each `ray.remote(AgentActor)` is a new class
    that Ray pickles and exports again when its first actor is made, 50-800 ms that blocked the
    supervisor's event loop at every spawn and pool refill (the reply to the spawn waited)."""
    return ray.remote(AgentActor)


def agent_options(name: str, config: FleetConfig) -> dict[str, Any]:
    # num_cpus=0: an agent actor waits on I/O; the CPU belongs to the assistant it runs.
    return {
        "name": name,
        "namespace": config.agent.namespace,
        "lifetime": "detached",
        "max_restarts": -1,
        "max_concurrency": 100,
        "num_cpus": 0,
        "get_if_exists": True,
        **config.agent_options,
    }


def named_actors(namespace: str) -> list[str]:
    """The names of the agents' and pool slots' actors Ray knows in the fleet's namespace."""
    found: list[Any] = list_named_actors(all_namespaces=True)
    names = [a["name"] for a in found if isinstance(a, dict) and a.get("namespace") == namespace]
    return [n for n in names if n.startswith((AGENT_PREFIX, SLOT_PREFIX))]

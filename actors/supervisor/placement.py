"""Placement: a template's `resources` as the agent actor's Ray options, checked against Ray.

An agent's actor is where its tmux session, processes, ports and services live, so placing the
actor places the agent. `resources.ray` becomes Ray's custom `resources` of the actor (and
`resources.reserve` turns `cpu` / `memory_mb` into `num_cpus` / `memory`); Ray's scheduler
then puts it on a node that has them. Ray gives each node a `node:<ip>` resource of 1, so a
template can also pin agents to one machine.

A request no node could ever hold would leave the actor pending forever, so it is refused at
once with a sentence; one that only has to wait for a busy node waits `PLACE_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import ray

from schemas.errors import CannotPlace
from schemas.templates import Resources, Template, decode_spec

PLACE_TIMEOUT_S = 60.0
MIB = 2**20


def ray_options(resources: Resources) -> dict[str, Any]:
    """The Ray actor options that place an agent with these resources ({} for anywhere)."""
    options: dict[str, Any] = {}
    if resources.ray:
        options["resources"] = dict(resources.ray)
    if resources.reserve and resources.cpu:
        options["num_cpus"] = resources.cpu
    if resources.reserve and resources.memory_mb:
        options["memory"] = resources.memory_mb * MIB
    return options


def options_of(template: Template | None) -> dict[str, Any]:
    return ray_options(template.resources) if template is not None else {}


def options_of_spec(spec: str) -> dict[str, Any]:
    """The placement an agent recorded with its template (`agent.created`'s spec)."""
    return options_of(decode_spec(spec))


def wanted(options: Mapping[str, Any]) -> dict[str, float]:
    """What the options ask of a node, in the names Ray uses for a node's resources."""
    want: dict[str, float] = dict(options.get("resources") or {})
    if options.get("num_cpus"):
        want["CPU"] = float(options["num_cpus"])
    if options.get("memory"):
        want["memory"] = float(options["memory"])
    return want


def check(agent_id: str, options: Mapping[str, Any], nodes: list[dict[str, Any]]) -> None:
    """Refuse options that no live node could ever satisfy (its totals, not what is free now)."""
    want = wanted(options)
    for name, amount in want.items():
        if amount <= 0 or (amount > 1 and amount != int(amount)):
            why = f"{name}={amount:g} must be above 0, and whole when above 1 (a Ray rule)"
            raise CannotPlace(agent_id, want, why)
    totals = [n.get("Resources") or {} for n in nodes if n.get("Alive")]
    if any(all(t.get(k, 0.0) >= v for k, v in want.items()) for t in totals):
        return
    offered = sorted({k for t in totals for k in t if not k.startswith(("node:", "object_store"))})
    why = f"no Ray node has that much (its {len(totals)} live node(s) offer {offered})"
    raise CannotPlace(agent_id, want, why)


async def checked(agent_id: str, options: Mapping[str, Any]) -> None:
    if wanted(options):
        check(agent_id, options, await asyncio.to_thread(ray.nodes))


async def started(
    actor: Any, agent_id: str, options: Mapping[str, Any], timeout_s: float = PLACE_TIMEOUT_S
) -> None:
    """Wait until Ray has placed and started the actor; give up (and end it) after `timeout_s`."""
    try:
        await asyncio.wait_for(actor.agent_id.remote(), timeout_s)
    except TimeoutError:
        ray.kill(actor, no_restart=True)
        why = f"every node that has it stayed busy for {timeout_s:.0f} s"
        raise CannotPlace(agent_id, wanted(options), why) from None

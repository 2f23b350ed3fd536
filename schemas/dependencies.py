"""The order dev services start and stop in, from their `depends_on`: pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from schemas.errors import FleetError
from schemas.templates import ServiceSpec


class BadDependencies(FleetError):
    """A service depends on one that does not exist, or the dependencies form a cycle."""

    code = "bad_dependencies"

    def __init__(self, service: str, why: str) -> None:
        self.service, self.why = service, why
        super().__init__(f"cannot order the services: {service} {why}")


def start_order(services: Mapping[str, ServiceSpec]) -> list[str]:
    """Every service after all it depends on; ties keep the template's order.

    Stop in the reverse of this order.
    """
    for name, spec in services.items():
        for dep in spec.depends_on:
            if dep not in services:
                raise BadDependencies(name, f"depends on {dep!r}, which is not a service")
            if dep == name:
                raise BadDependencies(name, "depends on itself")
    done: list[str] = []
    placed: set[str] = set()
    pending = list(services)
    while pending:
        ready = [n for n in pending if set(services[n].depends_on) <= placed]
        if not ready:
            cycle = " -> ".join(_cycle(services, pending))
            raise BadDependencies(pending[0], f"is in a dependency cycle: {cycle}")
        for name in ready:
            done.append(name)
            placed.add(name)
        pending = [n for n in pending if n not in placed]
    return done


def _cycle(services: Mapping[str, ServiceSpec], pending: list[str]) -> list[str]:
    """One cycle among the services that could not be placed, for the sentence."""
    path = [pending[0]]
    while True:
        nxt = next(d for d in services[path[-1]].depends_on if d in pending)
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)

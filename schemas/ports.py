"""Port leases: the requests the ports service answers (`fleet.ctl.ports`) and the lease record.

A lease is named `<service>.<port name>` (`api.http`); the agent and its services see it as
`PORT_<SERVICE>_<NAME>` (and each service as `PORT_<NAME>`, plus `PORT` for its first port).
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from schemas.templates import Template


class PortsRequest(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="op", forbid_unknown_fields=True
):
    by: str = ""
    id: str = ""


class LeasePorts(PortsRequest, frozen=True, tag="lease"):
    """Lease one port per name to `agent`; names it already holds keep their port."""

    agent: str
    names: tuple[str, ...]


class ReleasePorts(PortsRequest, frozen=True, tag="release"):
    agent: str
    names: tuple[str, ...] = ()  # empty: every lease of the agent


class ListLeases(PortsRequest, frozen=True, tag="ls"):
    agent: str = ""  # empty: every agent


PortsOp = LeasePorts | ReleasePorts | ListLeases


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """The value under key `<port>` in KV `fleet_ports`: who holds the port, since when."""

    agent: str
    name: str
    at: datetime
    holder: str = ""  # the ports service instance that handed it out


_NOT_ENV = re.compile(r"[^A-Za-z0-9_]")


def lease_name(service: str, port: str) -> str:
    return f"{service}.{port}"


def env_key(name: str) -> str:
    """`api.http` -> `PORT_API_HTTP`; `http` -> `PORT_HTTP` (a service's own view)."""
    return "PORT_" + _NOT_ENV.sub("_", name).upper()


def template_leases(template: Template) -> list[str]:
    """Every lease name a template's services need, in service order."""
    return [lease_name(s, p) for s, spec in template.services.items() for p in spec.ports]

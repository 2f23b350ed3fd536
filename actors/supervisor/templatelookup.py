"""Which template a spawn runs: the templates service's latest version, else the built-in.

Actors and services meet only on NATS, so the supervisor asks `fleet.ctl.templates`; when no
templates service answers (fleetd started without it, or a test), the built-in YAML shipped
in the package is used, as version 0.
"""

from __future__ import annotations

import logging

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from infra import template_files as templates
from schemas import subjects
from schemas.errors import RemoteError
from schemas.templates import ShowTemplate, Template

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0


class _Shown(msgspec.Struct):
    template: Template
    version: int


async def resolve_template(
    nc: Client, name: str, timeout: float = REQUEST_TIMEOUT_S
) -> tuple[Template, int]:
    """The resolved template called `name` and its version (0: built in, no service asked)."""
    subjects.token(name, "template")
    request = msgspec.json.encode(ShowTemplate(name=name, by="service:supervisor"))
    try:
        msg = await nc.request(subjects.control("templates"), request, timeout=timeout)
    except NoRespondersError:
        log.debug("no templates service answers; using the built-in template %s", name)
        return templates.builtin(name), 0
    except TimeoutError as e:
        raise RemoteError(
            "timeout", f"the templates service did not answer within {timeout:g} s"
        ) from e
    reply = msgspec.json.decode(msg.data)
    if reply.get("ok") is not True:
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code", "error")), str(error.get("message", reply)))
    shown = msgspec.convert(reply, _Shown)
    return shown.template, shown.version

"""An agent's ports: leased from the ports service before its session starts, given back at stop.

Each service port of the template is leased as `<service>.<port>` and recorded in
`ports.leased`, so the session's environment has `PORT_<SERVICE>_<NAME>` and the worktree a
generated `.env` with the same lines. When no ports service answers, free ports chosen by the
kernel (bind to port 0) are recorded instead, so an agent still runs without it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from pathlib import Path
from typing import Any

import msgspec
from nats.errors import NoRespondersError

from actors.agent.context import AgentContext
from infra.agentfiles import exclude_untracked
from schemas import events as e
from schemas import subjects
from schemas.errors import RemoteError
from schemas.ports import LeasePorts, ReleasePorts, env_key, template_leases
from schemas.templates import decode_spec

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
DOTENV = ".env"
BEGIN, END = "# >>> fleetd ports (generated; rewritten at each start)", "# <<< fleetd ports"
_BLOCK = re.compile(rf"{re.escape(BEGIN)}\n.*?{re.escape(END)}\n?", re.DOTALL)


async def _request(ctx: AgentContext, payload: msgspec.Struct) -> dict[str, Any]:
    """Ask the ports service of this actor's node (its bind check must happen here), or, where
    none runs (one machine, or a node without its services yet), the fleet-wide one."""
    data = msgspec.json.encode(payload)
    try:
        if not ctx.node:
            raise NoRespondersError
        subject = subjects.node_control("ports", ctx.node)
        msg = await ctx.nc.request(subject, data, REQUEST_TIMEOUT_S)
    except NoRespondersError:
        msg = await ctx.nc.request(subjects.control("ports"), data, REQUEST_TIMEOUT_S)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if reply.get("ok") is not True:
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code", "error")), str(error.get("message", reply)))
    return reply


async def lease_ports(ctx: AgentContext, worktree: Path) -> None:
    """Lease the template's ports the state lacks, record them, write the worktree's `.env`."""
    template = decode_spec(ctx.state.template_spec)
    wanted = template_leases(template) if template else []
    missing = tuple(n for n in wanted if n not in ctx.state.ports)
    if missing:
        try:
            req = LeasePorts(agent=ctx.state.agent_id, names=missing, by="agent")
            got: dict[str, int] = (await _request(ctx, req))["ports"]
        except NoRespondersError:
            log.warning("no ports service answers; agent %s takes free ports", ctx.state.agent_id)
            got = {name: _free_port() for name in missing}
        except TimeoutError as err:
            raise RemoteError("timeout", "the ports service did not answer in time") from err
        await ctx.record([e.PortsLeased(ports=got, **ctx.meta())])
    if wanted:
        ports = {n: ctx.state.ports[n] for n in wanted if n in ctx.state.ports}
        await asyncio.to_thread(write_dotenv, worktree, ports)


async def release_ports(ctx: AgentContext) -> None:
    """Give every lease back (the ports service also does so from the events) and record it."""
    held = dict(ctx.state.ports)
    if not held:
        return
    try:
        await _request(ctx, ReleasePorts(agent=ctx.state.agent_id, by="agent"))
    except (NoRespondersError, TimeoutError, RemoteError) as err:
        log.warning(
            "agent %s: ports not released now (%s); the ports service will",
            ctx.state.agent_id,
            err,
        )
    await ctx.record([e.PortsReleased(ports=held, **ctx.meta())])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_dotenv(worktree: Path, ports: dict[str, int]) -> Path:
    """Put `PORT_<SERVICE>_<NAME>=<port>` lines in the worktree's `.env`, in a fenced block that
    is replaced each time (lines of a user's own `.env` are kept), and keep it out of git status."""
    path = worktree / DOTENV
    old = path.read_text() if path.exists() else ""
    lines = "".join(f"{env_key(name)}={port}\n" for name, port in sorted(ports.items()))
    block = f"{BEGIN}\n{lines}{END}\n"
    kept = _BLOCK.sub("", old)
    path.write_text(kept + ("" if not kept or kept.endswith("\n") else "\n") + block)
    _exclude(worktree)
    return path


def _exclude(worktree: Path) -> None:
    """`/.env` in the agent's info/exclude, unless its project tracks one (infra/agentfiles.py)."""
    exclude_untracked(worktree, DOTENV)

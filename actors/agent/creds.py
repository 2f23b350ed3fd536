"""An agent's own NATS user: granted before its session starts, revoked when it stops.

The actor makes the password, writes the agent's credentials file (`FLEET_NATS_CREDS`, mode
0600, under `<state_dir>/nats-auth/agents/`) and sends only a bcrypt hash to the credentials
service of `fleet up` (`fleet.ctl.creds`), which puts the user in the server's config and
answers once the server has reloaded it. Without `AgentConfig.nats_auth` (a NATS that fleetd
does not configure) nothing is granted; the agent's processes then get the NATS URL without
any user or password in it, so the control plane's credential never reaches an agent.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.errors import NoRespondersError

from actors.agent.context import AgentContext
from infra import natsauth
from schemas import subjects
from schemas.credentials import CredsRequest
from schemas.errors import FleetError

log = logging.getLogger(__name__)

CREDS_TIMEOUT_S = 20.0  # a reload waits for the server; many spawns at once share reloads
_DONE = {"grant": "granted", "revoke": "revoked"}


def creds_path(ctx: AgentContext) -> str:
    return str(natsauth.AuthDir.of(ctx.config.state_dir).agent_creds_path(ctx.state.agent_id))


def nats_env(ctx: AgentContext) -> dict[str, str]:
    """What the agent's processes need to reach NATS as themselves."""
    found = {"FLEET_NATS_URL": natsauth.without_userinfo(ctx.config.nats_url)}
    if ctx.config.nats_auth:
        found["FLEET_NATS_CREDS"] = creds_path(ctx)
    return found


async def _ask(ctx: AgentContext, req: CredsRequest) -> None:
    subject = subjects.control("creds")
    try:
        msg = await ctx.nc.request(subject, msgspec.json.encode(req), timeout=CREDS_TIMEOUT_S)
    except NoRespondersError as e:
        raise FleetError(
            f"no credentials service answers on {subject}, so agent {req.agent_id}'s NATS "
            f"user cannot be {_DONE[req.op]}; is `fleet up` running?"
        ) from e
    except TimeoutError as e:
        raise FleetError(
            f"the credentials service did not {req.op} agent {req.agent_id}'s NATS user "
            f"within {CREDS_TIMEOUT_S:.0f} s"
        ) from e
    reply = msgspec.json.decode(msg.data)
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        error = reply.get("error", {}) if isinstance(reply, dict) else {}
        raise FleetError(str(error.get("message") or f"the credentials service refused {req.op}"))


async def grant_nats_user(ctx: AgentContext) -> None:
    """A fresh user for the agent (a restart gets a new password), in force on return."""
    if not ctx.config.nats_auth:
        return
    agent_id = ctx.state.agent_id
    password = natsauth.new_password()
    hashed = await asyncio.to_thread(natsauth.hash_password, password)
    cred = natsauth.Credential(
        user=natsauth.agent_user(agent_id),
        password=password,
        inbox_prefix=natsauth.agent_inbox(agent_id),
    )
    path = natsauth.AuthDir.of(ctx.config.state_dir).agent_creds_path(agent_id)
    await asyncio.to_thread(natsauth.write_credential, path, cred)
    await _ask(ctx, CredsRequest(op="grant", agent_id=agent_id, password_hash=hashed))


async def revoke_nats_user(ctx: AgentContext, *, quiet: bool = False) -> None:
    """Take the agent's user away (its connections are closed) and delete its file.

    `quiet`: on a path that is already failing, a refusal is logged instead of raised."""
    if not ctx.config.nats_auth:
        return
    agent_id = ctx.state.agent_id
    try:
        await _ask(ctx, CredsRequest(op="revoke", agent_id=agent_id))
    except FleetError as e:
        if not quiet:
            raise
        log.warning("agent %s: its NATS user was not revoked: %s", agent_id, e)
        return
    path = natsauth.AuthDir.of(ctx.config.state_dir).agent_creds_path(agent_id)
    await asyncio.to_thread(natsauth.remove_file, path)

"""The credentials service: per-agent NATS users of the embedded server, granted and revoked.

It runs inside `fleet up`, next to the nats-server it owns, and answers `fleet.ctl.creds`
(control plane only: agents may not publish on `fleet.ctl.*`). Each change rewrites the
server's config (infra/natsauth.py) and reloads it; the reply is sent only once the server
applies the new file, which a canary user with a fresh password proves: the reload is atomic,
so when the canary's new password is accepted, every other change of that file is in force.
Changes that arrive while a reload runs share the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from infra import natsauth
from infra.eventstore import EventStore
from infra.natsserver import NatsServer
from schemas import replies, subjects
from schemas.credentials import CredsRequest
from schemas.errors import FleetError
from schemas.states import Lifecycle
from services import replying

log = logging.getLogger(__name__)

RELOAD_TIMEOUT_S = 30.0  # a guard; a reload under a loaded 2-core machine takes ~0.1 s
PROBE_PAUSE_S = 0.005


async def _accepts(url: str, cred: natsauth.Credential) -> bool:
    """Whether the server lets `cred` in now (one connect, no retries)."""
    try:
        nc = await nats.connect(
            natsauth.with_credential(url, cred),
            connect_timeout=1,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=_quiet,
        )
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


async def _quiet(e: Exception) -> None:
    """A probe's refusals are expected; nats-py would log each through its default callback."""


@dataclass
class Credentials:
    """Owns `<state_dir>/nats-auth` while `fleet up` runs; `reload` applies it to `server`."""

    server: NatsServer
    auth: natsauth.AuthDir
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _asked: int = 0  # changes made so far
    _applied: int = 0  # changes the server is known to have in force

    async def reload(self) -> None:
        """Return once the server has every change made before this call (one reload may
        serve many callers)."""
        self._asked += 1
        wanted = self._asked
        async with self._lock:
            if self._applied >= wanted:
                return
            upto = self._asked
            await self._reload_now()
            self._applied = upto

    async def _reload_now(self) -> None:
        canary = natsauth.Credential(user=natsauth.CANARY_USER, password=natsauth.new_password())
        await asyncio.to_thread(self.auth.write_config, canary.password)
        started = time.monotonic()
        self.server.reload()
        while not await _accepts(self.server.url, canary):
            if time.monotonic() - started > RELOAD_TIMEOUT_S:
                raise FleetError(
                    f"nats-server did not apply its new users within {RELOAD_TIMEOUT_S:.0f} s "
                    f"(its log: {self.server.log_path})"
                )
            await asyncio.sleep(PROBE_PAUSE_S)

    async def handle(self, data: bytes) -> bytes:
        req: CredsRequest = replies.decode_request(data, CredsRequest, "credentials request")
        if req.op == "grant":
            await asyncio.to_thread(self.auth.add_agent, req.agent_id, req.password_hash)
            had = True
        else:
            had = await asyncio.to_thread(self.auth.remove_agent, req.agent_id)
        if had:
            await self.reload()
        done = "granted" if req.op == "grant" else "revoked" if had else "had none to revoke"
        log.info("agent %s: NATS user %s", req.agent_id, done)
        return replies.ok(user=natsauth.agent_user(req.agent_id), changed=had)


async def prune(nc: Client, creds: Credentials) -> list[str]:
    """Revoke the users of agents that stopped or went away while `fleet up` was down (a crash
    skips the revoke at stop): the log says which agents may still hold one."""
    store = EventStore(nc)
    dropped = []
    for agent_id in sorted(await asyncio.to_thread(creds.auth.agents)):
        state = (await store.load(agent_id)).state
        if state.removed or state.lifecycle in (Lifecycle.NEW, Lifecycle.STOPPED):
            await asyncio.to_thread(creds.auth.remove_agent, agent_id)
            await asyncio.to_thread(natsauth.remove_file, creds.auth.agent_creds_path(agent_id))
            dropped.append(agent_id)
    if dropped:
        await creds.reload()
        log.info("NATS users of %d stopped or removed agent(s) revoked: %s", len(dropped), dropped)
    return dropped


async def start(nc: Client, creds: Credentials) -> Subscription:
    """Answer `fleet.ctl.creds` until the subscription is dropped."""
    return await replying.serve(nc, subjects.control("creds"), creds.handle, "creds")

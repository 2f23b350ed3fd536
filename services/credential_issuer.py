"""The credentials service: per-agent NATS users, granted and revoked.

It runs inside `fleet up` and answers `fleet.ctl.creds` (control plane only: agents may not
publish on `fleet.ctl.*`). The users are kept in `<state_dir>/nats-auth` (infra/natsauth.py);
how a change is put in force depends on whose NATS it is:

- `EmbeddedUsers`, the nats-server `fleet up` runs: each change rewrites the server's config
  and reloads it; the reply is sent only once the server applies the new file, which a canary
  user with a fresh password proves: the reload is atomic, so when the canary's new password
  is accepted, every other change of that file is in force. Changes that arrive while a
  reload runs share the next one.
- `CalloutUsers`, a NATS you run with auth callout (infra/natscallout.py): the server asks
  this service about every agent that connects, so a grant is in force at once; a revoke
  closes the agent's live connections through the system account.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

import infra.nats
from infra import natsauth, natscallout, responder
from infra.config import Settings
from infra.eventstore import EventStore
from infra.natsserver import NatsServer
from schemas import replies, subjects
from schemas.credentials import CredsRequest
from schemas.errors import FleetError, InvalidSetting
from schemas.states import Lifecycle

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
    """Owns `<state_dir>/nats-auth` while `fleet up` runs; `put_in_force` applies changes."""

    auth: natsauth.AuthDir

    async def put_in_force(self, revoked: list[str]) -> None:
        """Return once the users as recorded now are the ones NATS lets in; `revoked`: the
        agents whose users were just taken away."""
        raise NotImplementedError

    async def handle(self, data: bytes) -> bytes:
        req: CredsRequest = replies.decode_request(data, CredsRequest, "credentials request")
        if req.op == "grant":
            await asyncio.to_thread(self.auth.add_agent, req.agent_id, req.password_hash)
            had = True
            await self.put_in_force([])
        else:
            had = await asyncio.to_thread(self.auth.remove_agent, req.agent_id)
            if had:
                await self.put_in_force([req.agent_id])
        done = "granted" if req.op == "grant" else "revoked" if had else "had none to revoke"
        log.info("agent %s: NATS user %s", req.agent_id, done)
        return replies.ok(user=natsauth.agent_user(req.agent_id), changed=had)


@dataclass
class EmbeddedUsers(Credentials):
    """The users of fleet's own nats-server, written into its config and reloaded."""

    server: NatsServer = field(kw_only=True)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _asked: int = 0  # changes made so far
    _applied: int = 0  # changes the server is known to have in force

    async def put_in_force(self, revoked: list[str]) -> None:
        await self.reload()

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


@dataclass
class CalloutUsers(Credentials):
    """The agents' users on a NATS you run, answered through its auth callout.

    `nc` is fleet's control connection (an `auth_users` user of the callout's account), on
    which the server's requests arrive; `system` a connection of the system account, which
    closes a revoked agent's connections; `account` where agents are put: the control user's."""

    nc: Client = field(kw_only=True)
    system: Client = field(kw_only=True)
    issuer: Any = field(kw_only=True)
    account: str = field(kw_only=True)

    async def put_in_force(self, revoked: list[str]) -> None:
        for agent_id in revoked:
            user = natsauth.agent_user(agent_id)
            try:
                closed = await natscallout.kick(self.system, user, self.account)
            except (nats.errors.Error, TimeoutError, ValueError) as e:
                raise FleetError(
                    f"agent {agent_id}'s NATS user is revoked (no new connection is let in), "
                    f"but its open connections were not closed: the system account did not "
                    f"do it ({e!r}); check FLEET_NATS_SYSTEM_URL"
                ) from e
            if closed:
                log.info("agent %s: %d open NATS connection(s) closed", agent_id, closed)

    async def answer(self, msg: Msg) -> None:
        """One authorization request: the agent's user with its permissions, or a refusal."""
        try:
            req = natscallout.read_request(msg.data)
        except natscallout.BadToken as e:
            log.warning("an authorization request was ignored: %s", e)
            return
        verdict = await asyncio.to_thread(self._decide, req)
        if isinstance(verdict, str):
            reply = natscallout.refuse(req, self.issuer, verdict)
        else:
            reply = natscallout.allow(req, self.issuer, self.account, verdict)
        await msg.respond(reply)

    def _decide(self, req: natscallout.AuthRequest) -> dict[str, Any] | str:
        """The agent's permissions if `req` holds its current password, else why not."""
        who = f"NATS user {req.user!r} from {req.host}"
        if not req.user.startswith(natsauth.AGENT_USER_PREFIX):
            return f"{who} is not an agent of this fleet"
        agent_id = req.user.removeprefix(natsauth.AGENT_USER_PREFIX)
        try:
            hashed = self.auth.agent_hash(agent_id)
        except FleetError:  # not a valid agent id
            return f"{who} is not an agent of this fleet"
        if hashed is None:
            return f"{who} has no credential now (never granted, or revoked)"
        if not natsauth.password_matches(req.password, hashed):
            return f"{who} gave a wrong password"
        return natsauth.agent_permissions(agent_id)

    async def serve(self) -> Subscription:
        return await self.nc.subscribe(
            natscallout.AUTH_SUBJECT, queue="fleet-callout", cb=self.answer
        )


async def callout(
    nc: Client, auth: natsauth.AuthDir, seed_file: Path, system_url: str
) -> CalloutUsers:
    """The callout service's parts, checked before anything is served."""
    issuer = await asyncio.to_thread(natscallout.load_issuer, seed_file)
    system = await infra.nats.connect(system_url, name="fleet-callout-system")
    account = await natscallout.account_of(nc)
    return CalloutUsers(auth, nc=nc, system=system, issuer=issuer, account=account)


async def for_fleet(
    settings: Settings, server: NatsServer | None, nc: Client, stack: AsyncExitStack
) -> Credentials | None:
    """Who issues agents' NATS users: the embedded server's config, the auth callout of a
    NATS you run (`FLEET_NATS_CALLOUT_SEED_FILE`), or nobody (a NATS you run without one)."""
    auth = natsauth.AuthDir.of(settings.state_dir)
    seed_file = settings.nats_callout_seed_file
    if server is not None and seed_file is not None:
        raise InvalidSetting(
            "FLEET_NATS_CALLOUT_SEED_FILE",
            str(seed_file),
            "it is for a NATS you run (FLEET_NATS_URL); the embedded server has its own users",
        )
    if server is not None:
        return EmbeddedUsers(auth, server=server)
    if seed_file is None:
        return None
    if not settings.nats_system_url:
        raise InvalidSetting(
            "FLEET_NATS_SYSTEM_URL",
            "",
            "with FLEET_NATS_CALLOUT_SEED_FILE, fleetd needs a system-account user "
            "(nats://sys:SECRET@host:4222) to close a revoked agent's NATS connections",
        )
    access = await callout(nc, auth, seed_file, settings.nats_system_url)
    stack.push_async_callback(access.system.close)
    stack.push_async_callback((await access.serve()).unsubscribe)
    return access


async def prune(nc: Client, creds: Credentials, mac_key: bytes | None = None) -> list[str]:
    """Revoke the users of agents that stopped or went away while `fleet up` was down (a crash
    skips the revoke at stop): the log says which agents may still hold one (read with the
    fleet key, so only events that verify count)."""
    store = EventStore(nc, mac_key=mac_key)
    dropped = []
    for agent_id in sorted(await asyncio.to_thread(creds.auth.agents)):
        state = (await store.load(agent_id)).state
        if state.removed or state.lifecycle in (Lifecycle.NEW, Lifecycle.STOPPED):
            await asyncio.to_thread(creds.auth.remove_agent, agent_id)
            await asyncio.to_thread(natsauth.remove_file, creds.auth.agent_creds_path(agent_id))
            dropped.append(agent_id)
    if dropped:
        await creds.put_in_force(dropped)
        log.info("NATS users of %d stopped or removed agent(s) revoked: %s", len(dropped), dropped)
    return dropped


async def start(nc: Client, creds: Credentials) -> Subscription:
    """Answer `fleet.ctl.creds` until the subscription is dropped."""
    return await responder.serve(nc, subjects.control("creds"), creds.handle, "creds")

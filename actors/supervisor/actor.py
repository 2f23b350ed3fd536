"""The supervisor actor: spawns agent actors, finds them again, keeps a warm pool.

It answers `fleet.ctl.spawn`, `list`, `find` and `acquire`, and, for ids no agent serves,
`fleet.cmd.<id>` with `unknown_agent` (see `_on_command`). It also runs the mail dead-letter
mover and the relay through which agents send mail and topic messages (mailrelay.py),
since it knows which agents exist. A spawn refused before the agent's log holds anything (a
repo that is not a git repository) leaves no agent behind: its actor is let go.

Agent actors are detached and restart on their own; the supervisor only has to know where
they are. After its own restart (or a new
`fleet up`) it rebuilds that knowledge from Ray's named actors and the event log: every agent
the log knows and has not removed gets its actor back, and the actor re-adopts the session.

Warm pool: actors started ahead of need (`fleet:slot:<n>`), bound to an agent at spawn, which
skips the Ray worker start. A binding is written to KV first, so a pool actor that Ray restarts
(its constructor runs again without an agent id) finds its agent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import ray
from nats.aio.msg import Msg
from ray.exceptions import RayError

from actors.names import AGENT_PREFIX, SLOT_PREFIX
from actors.supervisor.config import FleetConfig, agent_actor_class, agent_options, named_actors
from actors.supervisor.fleetview import FleetView
from actors.supervisor.mailrelay import MailRelay
from actors.supervisor.placement import checked, options_of, options_of_spec, started
from actors.supervisor.templatelookup import resolve_template
from infra import errorlog, priority, registry
from infra.deadletters import DeadLetters
from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams, replicas_for
from schemas import replies, subjects
from schemas.control import ActorView, ListRequest, SpawnRequest, view
from schemas.discovery import AcquireRequest, FindRequest, RegistryEntry, select
from schemas.errors import (
    AgentExists,
    BadRequest,
    RemoteError,
    TooManyAgents,
    UnknownAgent,
)
from schemas.templates import encode_spec

log = logging.getLogger(__name__)

# After its connection comes back, the supervisor hands commands to known agents through Ray
# for this long: their actors reconnect on their own schedule (infra/nats.py backs off).
SETTLE_S = 20.0


class Supervisor:
    async def __init__(self, config: FleetConfig) -> None:  # type: ignore[misc]  # Ray runs async constructors
        self.config = config
        errorlog.install(config.agent.state_dir, create=True)
        priority.favour_this_thread()  # commands before Ray's own timers
        self.nc = await connect(config.agent.nats_url, name="fleet-supervisor")
        self.store = EventStore(self.nc, mac_key=config.agent.mac_key)  # verified loads
        # idempotent; the log must exist before agents
        await ensure_streams(self.nc.jetstream(), replicas_for(self.nc))
        self.actors: dict[str, Any] = {}  # agent id -> actor handle
        self.pool: list[Any] = []
        self.reserved: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._filling = False
        self.pool_target = config.pool_size
        self._reconnects = 0  # this connection's reconnects seen so far (`_settling`)
        self._settle_until = 0.0
        # `list` answers from the log (verified events only), not 200 Ray calls
        self.view = FleetView(self.nc, config.agent.mac_key)
        await self.view.start()
        await self.refind()
        handlers = (
            ("spawn", self._spawn),
            ("list", self._list),
            ("find", self._find),
            ("acquire", self._acquire),
        )
        for verb, handler in handlers:
            await self.nc.subscribe(subjects.control(verb), cb=self._answering(handler))
        await self.nc.subscribe(
            subjects.ALL_COMMANDS, queue=subjects.UNKNOWN_AGENT_QUEUE, cb=self._on_command
        )
        self.dead_letters = DeadLetters(self.nc)
        await self.dead_letters.start()
        # The relay's own connection: what agents send (a flood too) reaches only it.
        self.relay_nc = await connect(config.agent.nats_url, name="fleet-mail-relay")
        self.relay = MailRelay(self.relay_nc, self.actors.keys)
        await self.relay.start()
        await self.relay_nc.flush()
        await self.nc.flush()
        self._background(self._fill_pool())

    # -- finding agents ----------------------------------------------------------------------

    async def refind(self) -> list[str]:
        """Know every live actor again; give back an actor to each agent the log keeps."""
        namespace = self.config.agent.namespace
        for name in named_actors(namespace):
            handle = ray.get_actor(name, namespace=namespace)
            if name.startswith(AGENT_PREFIX):
                self.actors[name.removeprefix(AGENT_PREFIX)] = handle
            elif name.startswith(SLOT_PREFIX):
                bound = await handle.agent_id.remote()
                if bound:
                    self.actors[bound] = handle
                else:
                    self.pool.append(handle)
        for agent_id in await self.store.agents():
            if agent_id in self.actors:
                continue
            state = (await self.store.load(agent_id)).state
            if state.agent_id and state.lifecycle.value != "NEW" and not state.removed:
                options = options_of_spec(state.template_spec)
                self.actors[agent_id] = self._cold(agent_id, options)
        await asyncio.gather(*(a.agent_id.remote() for a in self.actors.values()))
        return sorted(self.actors)

    def _cold(self, agent_id: str, placed: dict[str, Any] | None = None) -> Any:
        """A new actor for the agent; `placed`: its template's Ray options (placement.py)."""
        options = {**agent_options(AGENT_PREFIX + agent_id, self.config), **(placed or {})}
        return agent_actor_class().options(**options).remote(self.config.agent, agent_id)

    async def _fill_pool(self) -> None:
        if self._filling:
            return
        self._filling = True
        try:
            # Yield once first: the reply of the spawn that asked for this refill is waiting
            # in nats-py's flusher, which is ready behind this task, and making an actor
            # blocks the event loop for milliseconds.
            await asyncio.sleep(0)
            await self._top_up()
        finally:
            self._filling = False

    async def _top_up(self) -> None:
        while len(self.pool) < self.pool_target:
            slot = SLOT_PREFIX + secrets.token_hex(4)
            handle = (
                agent_actor_class()
                .options(**agent_options(slot, self.config))
                .remote(self.config.agent, None, slot.removeprefix(SLOT_PREFIX))
            )
            await handle.agent_id.remote()  # wait until its worker runs
            if len(self.pool) >= self.pool_target:  # the target shrank meanwhile
                ray.kill(handle, no_restart=True)
                return
            self.pool.append(handle)

    # -- requests ----------------------------------------------------------------------------

    def _answering(self, handler: Any) -> Any:
        async def on_msg(msg: Msg) -> None:
            self._background(self._answer(msg, handler))

        return on_msg

    async def _answer(self, msg: Msg, handler: Any) -> None:
        try:
            reply = await handler(msg.data)
        except Exception as e:  # noqa: BLE001 (the one error boundary: infra/errorlog.py)
            reply = errorlog.reply_to(e, log, "supervisor request")
        if msg.reply:
            await msg.respond(reply)

    async def _spawn(self, data: bytes) -> bytes:
        req = replies.decode_request(data, SpawnRequest, "spawn request")
        name = req.name or f"{subjects.token(req.template, 'template')}-{secrets.token_hex(2)}"
        subjects.token(name, "agent name")
        template, version = await resolve_template(self.nc, req.template)
        if name in self.actors or name in self.reserved or await self._in_log(name):
            raise AgentExists(name)
        if len(self.actors) + len(self.reserved) >= self.config.max_agents:
            raise TooManyAgents(self.config.max_agents)
        placed = options_of(template)
        await checked(name, placed)
        self.reserved.add(name)
        try:
            actor, pooled = await self._actor_for(name, placed)
            req = msgspec.structs.replace(req, name=name)
            command = req.command or template.assistant.command
            spec = encode_spec(template)
            reply: bytes = await actor.spawn.remote(req, command, pooled, spec, version)
            if replies.is_error(msgspec.json.decode(reply)) and not await self._in_log(name):
                await self._let_go(actor)  # refused before its log held anything
            else:
                self.actors[name] = actor
                self._learn_where(name, reply)
        finally:
            self.reserved.discard(name)
        self._background(self._fill_pool())
        return reply

    async def _in_log(self, name: str) -> bool:
        """Whether the log holds an agent of this name: an event its actor signed. Messages
        on its subject that no actor signed (stored with the control plane's credential, or
        left under another fleet key) take no name: each is refused and reported as every
        reader refuses it, and the new agent's log goes on after them."""
        if not await self.store.last_seq(name):
            return False  # the usual case, one lookup
        loaded = await self.store.load(name)
        if loaded.state.lifecycle.value != "NEW" or loaded.skipped:
            return True
        log.warning("spawn of %s: %d message(s) on its log that no agent's actor signed are"
                    " refused (sequences %s); the name is free", name, len(loaded.refused),
                    ", ".join(str(r.seq) for r in loaded.refused))  # fmt: skip
        return False

    async def _let_go(self, actor: Any) -> None:
        """End an actor whose spawn was refused before anything was recorded: no agent of that
        name is left (a new spawn of the name is a new agent), and its pool slot is freed."""
        try:
            await actor.let_go.remote()
        except RayError as e:  # it died meanwhile: killing it is all that is left
            log.info("an actor let go after a refused spawn was gone already: %r", e)
        ray.kill(actor, no_restart=True)

    async def _actor_for(self, name: str, placed: dict[str, Any]) -> tuple[Any, bool]:
        """A warm pool actor bound to `name`, else a new one; and whether it was warm.

        An agent placed by its resources always gets a new actor, made where Ray places it."""
        if placed:
            actor = self._cold(name, placed)
            await started(actor, name, placed)
            return actor, False
        while self.pool:
            handle = self.pool.pop()
            try:
                await handle.bind.remote(name)
                return handle, True
            except ray.exceptions.RayActorError:
                continue  # a pool actor that died before use
        return self._cold(name), False

    def pool_size(self) -> int:
        return len(self.pool)

    async def set_pool_size(self, size: int) -> int:
        """Keep `size` warm actors from now on; surplus ones are ended at once."""
        self.pool_target = max(0, size)
        while len(self.pool) > self.pool_target:
            ray.kill(self.pool.pop(), no_restart=True)
        await self._fill_pool()
        return len(self.pool)

    async def _list(self, data: bytes) -> bytes:
        """Every agent with an actor (and with `removed`, every agent the log knows), folded
        from the log; from the actors themselves if the fold cannot catch up."""
        req = replies.decode_request(data or b"{}", ListRequest, "list request")
        live = list(self.actors)
        if await self.view.caught_up() and all(a in self.view.states for a in live):
            self.view.refresh(live, self._where)
            wanted = set(self.view.states) if req.removed else set(live)
            return replies.ok(agents=self.view.views(wanted))
        shown = await asyncio.gather(*(a.show.remote() for a in self.actors.values()))
        if req.removed:
            for agent_id in await self.store.agents():
                if agent_id not in self.actors:
                    loaded = await self.store.load(agent_id)
                    shown.append(msgspec.to_builtins(view(loaded.state, seq=loaded.position.seq)))
        return replies.ok(agents=sorted(shown, key=lambda v: v["id"]))

    def _learn_where(self, agent_id: str, reply: bytes) -> None:
        """The spawn reply says where the actor runs: the next list needs no Ray call for it."""
        with contextlib.suppress(msgspec.DecodeError, KeyError, TypeError):
            where = msgspec.json.decode(reply)["agent"]["actor"]
            self.view.actors[agent_id] = ActorView(where["node"], where["pid"])

    async def _where(self, agent_id: str) -> ActorView | None:
        """Where an agent's actor runs (it changes when Ray restarts the actor)."""
        actor = self.actors.get(agent_id)
        if actor is None:
            return None
        shown = await actor.show.remote()
        return ActorView(shown["actor"]["node"], shown["actor"]["pid"])

    async def _on_command(self, msg: Msg) -> None:
        """`fleet.cmd.*`: answer only for ids that no agent actor serves.

        A known agent's actor answers on its own subscription, and this handler stays silent
        for it (and for a name being spawned), so a known agent is answered exactly once and
        an unknown one gets `unknown_agent` instead of NATS's "no responders". Except for a
        while after this connection came back from an outage: the agent's actor may not be
        back yet, and a request that reached only this subscription would go unanswered, so
        it is handed to the actor through Ray (the actor does a request it got both ways once).
        """
        agent_id = subjects.agent_from_command(msg.subject)
        if not msg.reply:
            return
        if agent_id in self.actors:
            if self._settling():
                self._background(self._forward(agent_id, msg))
            return
        if agent_id in self.reserved:
            return
        await msg.respond(replies.error(UnknownAgent(agent_id)))

    def _settling(self) -> bool:
        """Whether this connection reconnected less than SETTLE_S ago (as far as we know)."""
        reconnects = self.nc.stats["reconnects"]
        if reconnects != self._reconnects:
            self._reconnects, self._settle_until = reconnects, time.monotonic() + SETTLE_S
        return time.monotonic() < self._settle_until

    async def _forward(self, agent_id: str, msg: Msg) -> None:
        try:
            reply = await self.actors[agent_id].forwarded.remote(msg.data, msg.reply, msg.headers)
        except (KeyError, RayError) as e:  # gone meanwhile: its own subscription is all there is
            log.info(
                "agent %s: a command taken after a reconnect was not handed on: %r", agent_id, e
            )
            return
        await msg.respond(reply)

    async def _find(self, data: bytes) -> bytes:
        req = replies.decode_request(data or b"{}", FindRequest, "find request")
        found = select(await registry.entries(self.nc), req, datetime.now(UTC))
        return replies.ok(agents=[msgspec.to_builtins(e) for e in found])

    async def _acquire(self, data: bytes) -> bytes:
        """Find `count` READY agents with the capabilities; spawn the missing ones."""
        req = replies.decode_request(data or b"{}", AcquireRequest, "acquire request")
        if not 1 <= req.count <= 50:
            raise BadRequest(
                f"invalid acquire request: count {req.count} is not 1 to 50", "invalid_field"
            )
        want = FindRequest(capabilities=req.capabilities, limit=req.count)
        found = select(await registry.entries(self.nc), want, datetime.now(UTC))
        missing = req.count - len(found)
        if missing and not req.repo:
            raise BadRequest(
                f"only {len(found)} of {req.count} agents with {list(req.capabilities)} are "
                "ready, and the acquire request names no `repo` to spawn more in",
                "not_enough_agents",
            )
        spawned = await asyncio.gather(*(self._spawn_for(req) for _ in range(max(0, missing))))
        agents = [msgspec.to_builtins(e) for e in [*found, *spawned]]
        return replies.ok(agents=agents, spawned=[e.id for e in spawned])

    async def _spawn_for(self, req: AcquireRequest) -> RegistryEntry:
        spawn = SpawnRequest(
            repo=req.repo, template=req.template, capabilities=req.capabilities, by=req.by
        )
        reply = msgspec.json.decode(await self._spawn(msgspec.json.encode(spawn)))
        if reply.get("ok") is not True:
            raise RemoteError(reply["error"]["code"], reply["error"]["message"])
        agent = reply["agent"]
        return RegistryEntry(
            id=agent["id"],
            name=agent["name"],
            template=agent["template"],
            capabilities=req.capabilities,
            lifecycle=agent["lifecycle"],
            activity=agent["activity"],
            endpoint=subjects.command(agent["id"]),
            node=agent["actor"]["node"],
            heartbeat_at=datetime.now(UTC),
        )

    def forget(self, agent_id: str) -> None:
        """Called when an agent is removed: its actor is gone."""
        self.actors.pop(agent_id, None)
        self.view.forget(agent_id)

    def known(self) -> list[str]:
        return sorted(self.actors)

    async def unreachable(self, timeout: float) -> list[str]:
        """The agents whose actors are not connected to NATS within `timeout` (a new
        `fleet up` waits on this, so its agents answer as soon as it says it is ready)."""
        ids = sorted(self.actors)
        up = await asyncio.gather(
            *(self.actors[a].nats_connected.remote(timeout) for a in ids), return_exceptions=True
        )
        return [a for a, ok in zip(ids, up, strict=True) if ok is not True]

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

"""The agent actor: one detached Ray actor per agent, the single writer of that agent's log.

Ray rebuilds a dead actor by running its constructor again, so the constructor *is* recovery:
it folds the log (snapshot plus tail), re-adopts the tmux session that outlived the old worker
(or records why it cannot), and answers `fleet.cmd.<id>` again. Every command is decided,
appended, applied, then acted on; what acting finds out is appended as events too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError

from actors import checkpoints, confine, dedupe, recovery, services, steps
from actors.hookcalls import HookDesk
from actors.monitor import ActivityMonitor
from actors.steplock import StepLock
from infra import errorlog, heap, priority, registry, treestat
from infra.eventstore import EventStore
from infra.nats import connect
from infra.tmux import Tmux
from infra.worktree import Worktrees
from schemas import commands as c
from schemas import replies, subjects
from schemas.agent import AgentState, decide
from schemas.chain import Position
from schemas.control import SpawnRequest, view
from schemas.discovery import HEARTBEAT_S, RegistryEntry, entry
from schemas.errors import ConcurrentUpdate, FleetError, UnknownAgent
from schemas.events import AgentEvent
from schemas.profiles import agent_profile
from schemas.ratelimit import RateLimiter
from schemas.states import LIVE, Lifecycle
from schemas.templates import Template

log = logging.getLogger(__name__)

L = Lifecycle
BUSY_AFTER_S = 4.0  # a command waits this long for the agent's lock, then is answered busy
BUSY_MAX_S = 60.0  # the longest wait a sender's Fleet-Timeout can ask for


@dataclass(frozen=True)
class AgentConfig:
    """What every agent actor needs to know about the fleet; passed to its constructor."""

    nats_url: str
    state_dir: str
    worktree_root: str
    tmux_socket: str = "fleetd"
    namespace: str = "fleetd"  # Ray namespace of the fleet's named actors
    polite_timeout_s: float = 5.0
    term_timeout_s: float = 3.0
    monitor_period_s: float = 0.5
    checkpoint_every_min: float = 0.0  # automatic checkpoint per N minutes of WORKING; 0: off
    mac_key: bytes | None = None  # the fleet key: signs this agent's appends (infra/fleetkey.py)
    # `fleet up` configures the NATS server: each agent gets its own user (actors/creds.py).
    nats_auth: bool = False
    # The shell of the services and monitor windows. Without rc files: a user's .bashrc can
    # take seconds (or hang on a lock) and a fleet starts many of these at once.
    window_shell: str = "bash --noprofile --norc -i"
    # Per-sender limit on fleet.cmd.<id> (a sender is one NATS connection): a burst, then a rate.
    cmd_rate: float = 200.0
    cmd_burst: float = 400.0
    heartbeat_s: float = HEARTBEAT_S  # how often the agent's registry entry is refreshed
    confine_paths: bool = True  # Landlock the panes to the template's paths (actors/confine.py)
    # Bubblewrap namespaces for the panes, and (fleetd as root) a uid of each agent's own.
    confine_namespaces: bool = True
    confine_user: bool = True


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


class AgentActor:
    """Created with an agent id (a cold spawn), or bare for the warm pool and bound later."""

    async def __init__(  # type: ignore[misc]  # Ray runs async constructors
        self, config: AgentConfig, agent_id: str | None = None, slot: str | None = None
    ) -> None:
        self.config = config
        errorlog.install(config.state_dir)
        priority.favour_this_thread()  # commands before Ray's own timers
        self.tmux = Tmux(config.tmux_socket, shell=config.window_shell)
        self.nc = await connect(config.nats_url, name=f"fleet-agent-{agent_id or 'pool'}")
        self.store = EventStore(self.nc, mac_key=config.mac_key)
        self.lock = StepLock()  # one writer step at a time: decide, append, evolve, act
        self.state: AgentState = AgentState()
        self.position = Position()
        self.sub: Subscription | None = None
        self.hook_sub: Subscription | None = None  # its assistant's hooks (actors/hookcalls.py)
        self.monitor: ActivityMonitor | None = None
        self.interval: asyncio.Task[None] | None = None  # interval checkpoints (checkpoints.py)
        self.template: Template | None = None  # the resolved template, set before bring_up
        self.extra_env: dict[str, str] = {}  # env given at spawn (kept in infra/secretstore.py)
        self.secrets_loaded = False
        self.sandbox_uid: int | None = None  # its processes' own user (actors/confine.py)
        self.known_files: treestat.Known | None = None  # as a checkpoint saw them (checkpoints)
        self.services: services.Services | None = None  # this incarnation's dev services
        self.applied = dedupe.Applied()  # ids of commands already done: a retry is not redone
        self.inflight: dict[str, asyncio.Future[bytes]] = {}  # ids of commands being done
        self.limiter = RateLimiter(config.cmd_rate, config.cmd_burst, "commands")
        self.heartbeat = registry.Heartbeat(self.nc, self._registry_entry, config.heartbeat_s)
        self.node = _node_id()
        self.slot = slot
        if agent_id is None and slot is not None:
            agent_id = await self._slot_binding()
        if agent_id is not None:
            await self.bind(agent_id)
        heap.give_back()  # what starting took and freed (a spawn gives back in steps.py)

    async def _slot_binding(self) -> str | None:
        kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
        try:
            entry = await kv.get(subjects.token(self.slot or "", "slot"))
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    # -- identity and recovery ---------------------------------------------------------------

    async def bind(self, agent_id: str) -> None:
        """Become the writer of `agent_id`'s log: load it, answer its commands, re-adopt."""
        if self.state.agent_id:
            raise FleetError(f"this actor already serves agent {self.state.agent_id}")
        subjects.token(agent_id)
        if self.slot is not None:  # written first: a restarted pool actor must find its agent
            kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
            await kv.put(self.slot, agent_id.encode())
        loaded = await self.store.load(agent_id)
        self.state, self.position = loaded.state, loaded.position
        self.applied = await dedupe.load(self.store, agent_id, self.position.seq)
        self.sub = await self.nc.subscribe(subjects.command(agent_id), cb=self._on_command)
        desk = HookDesk(self)
        self.hook_sub = await self.nc.subscribe(subjects.hook(agent_id), cb=desk.on_message)
        await self.nc.flush()
        self.heartbeat.start()
        if self.state.lifecycle is not L.NEW:
            await confine.recall(self)
            if self.state.worktree:
                await confine.assign_user(self, Path(self.state.worktree), hand_over=False)
                await recovery.migrate_legacy(self)  # an older linked worktree: its own repo
            await self._adopt()

    async def _adopt(self) -> None:
        """After a restart: carry on with what the log says this agent was doing."""
        async with self.lock.step("re-adopting its session after a restart"):
            lifecycle = self.state.lifecycle
            if lifecycle in (L.RUNNING, L.PAUSED):
                if self.tmux.has_session(self.state.tmux_session):
                    self._start_monitor()
                    await services.adopt(self)
                    return
                await self._fail("its tmux session is gone (the tmux server died or was killed)")
            elif lifecycle is L.SPAWNING:
                await steps.undo_spawn(self)
                await self._fail("spawning was interrupted by a restart of its actor")
            elif lifecycle is L.STOPPING:
                await steps.stop(self, polite=False)

    def agent_id(self) -> str:
        return self.state.agent_id

    async def nats_connected(self, timeout: float) -> bool:
        """Whether this actor's NATS connection is up, waiting up to `timeout` for it to come
        back (after a restart of NATS it retries with a growing wait: infra/nats.py)."""
        deadline = time.monotonic() + timeout
        while not self.nc.is_connected:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def use_template(self, template: Template) -> None:
        """Run this resolved template at the next bring-up (its services, above all)."""
        self.template = template

    def where(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid()}

    # -- the writer's step -------------------------------------------------------------------

    async def execute(self, cmd: c.AgentCommand) -> list[AgentEvent]:
        """Decide and record one command (the lock must be held). Returns the new events."""
        events = decide(self.state, cmd, now=now(), new_id=new_id)
        await self.record(events)
        return events

    async def record(self, events: list[AgentEvent]) -> None:
        # Shielded: a cancelled caller must not leave the log ahead of this actor's state
        # (the events would be stored, the position stale, and the next append refused).
        write = asyncio.ensure_future(self.store.record(self.state, events, self.position))
        try:
            try:
                self.state, self.position = await asyncio.shield(write)
            except asyncio.CancelledError:
                self.state, self.position = await write
                raise
        except ConcurrentUpdate:
            # Someone else wrote to this agent's log. Reload, so the next command decides on
            # the truth, and let this one fail with the sentence.
            loaded = await self.store.load(self.state.agent_id)
            self.state, self.position = loaded.state, loaded.position
            raise
        self.applied.add(events)
        self.heartbeat.poke()  # the registry shows a new lifecycle or activity at once

    async def _fail(self, reason: str) -> None:
        self._stop_monitor()
        await self.execute(c.Fail(reason=reason, by="agent"))

    # -- commands ----------------------------------------------------------------------------

    async def spawn(
        self,
        request: SpawnRequest,
        template_command: str,
        pooled: bool,
        template_spec: str = "",
        template_version: int = 0,
    ) -> bytes:
        """Called by the supervisor once bound: record the agent with the resolved template
        (as JSON) and its version, bring it up; the reply."""
        try:
            await self._spawn(request, template_command, template_spec, template_version)
        except FleetError as e:
            return replies.error(e)
        return replies.ok(agent=self.show(), pooled=pooled)

    async def _spawn(
        self, request: SpawnRequest, template_command: str, spec: str = "", version: int = 0
    ) -> None:
        create = c.Create(
            name=request.name,
            template=request.template,
            repo=request.repo,
            base_ref=request.base_ref,
            capabilities=request.capabilities,
            options=request.options,
            command=template_command,
            template_spec=confine.recorded_spec(spec),  # secrets redacted in the log
            template_version=version,
            by=request.by or "user",
            id=request.id or new_id(),
        )
        # A repository that is not one, a base ref it does not have, or an assistant that is
        # not installed, is refused before anything is recorded: no agent. (HEAD is not
        # looked up: a spawn from it pays no git here.)
        worktrees = await asyncio.to_thread(Worktrees, request.repo, self.config.worktree_root)
        if request.base_ref != "HEAD":
            await asyncio.to_thread(worktrees.check_base, request.name, request.base_ref)
        await asyncio.to_thread(confine.check_installed, spec, template_command, request.env)
        async with self.lock.step("spawning"):
            await self.execute(create)
            await confine.remember(self, spec, request.env)
            await steps.bring_up(self)

    async def handle(self, cmd: c.AgentCommand, within: float = BUSY_AFTER_S) -> bytes:
        """Answer one command with the reply bytes; domain refusals raise FleetError.

        A writing command waits at most `within` seconds for the step in progress (a slow
        stop, a checkpoint) to end, then is refused as busy, having done nothing."""
        if (self.state.lifecycle is L.NEW or self.state.removed) and not isinstance(cmd, c.Create):
            raise UnknownAgent(self.state.agent_id)
        match cmd:
            case c.Show():
                return replies.ok(agent=self.show())
            case c.Output(lines=lines, window=window):
                return replies.ok(output=await steps.output(self, window, lines))
            case c.ProbeSandbox():
                return replies.ok(probes=await confine.probe(self))
        cmd = cmd if cmd.id else _with_id(cmd)
        running = self.inflight.get(cmd.id)
        if running is not None:  # sent again while it runs (a sender bridging a reconnect)
            return await asyncio.shield(running)  # the one outcome, for every copy
        outcome: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.inflight[cmd.id] = outcome
        try:
            reply = await self._write(cmd, within)
        except FleetError as e:
            outcome.set_result(replies.error(e))
            raise
        except BaseException:
            outcome.set_result(replies.error(FleetError(f"{verb(cmd)} failed; see the log")))
            raise
        finally:
            del self.inflight[cmd.id]
        outcome.set_result(reply)
        return reply

    async def _write(self, cmd: c.AgentCommand, within: float) -> bytes:
        async with self.lock.within(within, self.state.agent_id, verb(cmd)):
            if cmd.id in self.applied:  # a retry (same id) of a command already done
                return replies.ok(agent=self.show(), repeated=True)
            extra = await steps.act(self, cmd)
        return replies.ok(agent=self.show(), **extra)

    def show(self) -> dict[str, Any]:
        shown = view(self.state, seq=self.position.seq, node=self.node, pid=os.getpid())
        found: dict[str, Any] = msgspec.to_builtins(shown)
        return found

    async def _on_command(self, msg: Msg) -> None:
        # Each request gets its own task, so `show` answers while a slow `stop` runs; the
        # lock keeps the writing commands one at a time.
        asyncio.get_running_loop().create_task(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        try:
            self.limiter.check(_sender(msg), time.monotonic())
            reply = await self._reply(msg.data, msg.reply, msg.headers)
        except FleetError as e:
            reply = replies.error(e)
        if msg.reply:
            await msg.respond(reply)
        if self.state.removed:
            await self._retire()

    async def forwarded(self, data: bytes, reply_to: str, headers: dict[str, str] | None) -> bytes:
        """A command the supervisor took off `fleet.cmd.<id>` while this actor may have been
        off NATS (right after a NATS restart the supervisor can be back first, and a request
        then reaches only it): the reply, for the supervisor to send. Had this actor got the
        same request itself, both copies carry the same id (`_reply`) and it is done once."""
        reply = await self._reply(data, reply_to, headers)
        if self.state.removed:
            asyncio.get_running_loop().create_task(self._retire())
        return reply

    async def _reply(self, data: bytes, reply_to: str, headers: dict[str, str] | None) -> bytes:
        try:
            cmd: c.AgentCommand = replies.decode_request(data, c.AgentCommand, "command")
            if not cmd.id and reply_to:  # one request, one id, by whichever way it came
                cmd = msgspec.structs.replace(cmd, id=request_id(reply_to))
            return await self.handle(cmd, busy_budget(headers))
        except FleetError as e:
            return replies.error(e)
        except Exception:
            error_id = new_id()[:12]
            log.exception("agent %s: command failed (error id %s)", self.state.agent_id, error_id)
            return replies.unexpected(error_id)

    async def _retire(self) -> None:
        """A removed agent's actor lets go of everything and ends, for good."""
        await self.close()
        await registry.remove(self.nc, self.state.agent_id)
        await self._supervisor_forgets()
        if self.slot is not None:
            kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
            await kv.delete(self.slot)
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _supervisor_forgets(self) -> None:
        """Tell the supervisor, so it answers this id with unknown_agent from now on."""
        import ray

        from actors.supervisor import SUPERVISOR  # here: supervisor.py imports this module

        try:
            supervisor = ray.get_actor(SUPERVISOR, namespace=self.config.namespace)
        except ValueError:  # no supervisor (yet): it will not find this agent in the log
            return
        await supervisor.forget.remote(self.state.agent_id)

    def _registry_entry(self) -> RegistryEntry | None:
        if self.state.lifecycle is L.NEW or self.state.removed:
            return None
        return entry(self.state, self.node, now())

    # -- activity ----------------------------------------------------------------------------

    def _start_monitor(self) -> None:
        if self.monitor is None and self.state.tmux_session:
            profile = agent_profile(self.state)
            self.monitor = ActivityMonitor(self, profile, self.config.monitor_period_s)
            self.monitor.start()
            self.interval = checkpoints.start_interval(self)

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if self.interval is not None and self.interval is not asyncio.current_task():
            self.interval.cancel()
        self.interval = None

    async def let_go(self) -> None:
        """Its spawn was refused before anything was recorded: drop the binding (the pool
        slot's too) and NATS, for the supervisor to end this actor."""
        if self.state.lifecycle is not L.NEW:
            raise FleetError(f"agent {self.state.agent_id} has a log; it is not let go")
        await self.close()
        if self.slot is not None:
            kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
            await kv.delete(self.slot)

    async def close(self) -> None:
        """Let go of NATS (the tmux session lives on); used before the actor is killed."""
        self._stop_monitor()
        self.heartbeat.stop()
        for sub in (self.sub, self.hook_sub):
            if sub is not None:
                await sub.unsubscribe()
        self.sub = self.hook_sub = None
        await self.nc.flush()

    def is_live(self) -> bool:
        return self.state.lifecycle in LIVE


def verb(cmd: c.AgentCommand) -> str:
    """The command's wire name (`stop`, `send`, ...)."""
    return str(type(cmd).__struct_config__.tag)


def busy_budget(headers: dict[str, str] | None) -> float:
    """How long a command may wait for the agent's lock before it is answered `busy`: half
    of what its sender said it waits (header `Fleet-Timeout`, seconds), so the refusal is
    there before the sender gives up; `BUSY_AFTER_S` from a sender that did not say."""
    raw = (headers or {}).get(subjects.TIMEOUT_HEADER, "")
    try:
        patience = float(raw)
    except ValueError:
        return BUSY_AFTER_S
    if not patience > 0:  # also NaN
        return BUSY_AFTER_S
    return min(max(patience / 2, 0.05), BUSY_MAX_S)


def request_id(reply_to: str) -> str:
    """The id of a command sent without one: named after its reply inbox, which is the
    request's own (nats-py makes one per request), so every copy of it gets the same id."""
    return "inbox-" + hashlib.sha256(reply_to.encode()).hexdigest()[:32]


def _with_id(cmd: c.AgentCommand) -> c.AgentCommand:
    return msgspec.structs.replace(cmd, id=new_id())


def _sender(msg: Msg) -> str:
    """Who sent a request, for rate limits: its connection's reply prefix (nats-py answers
    every request of one connection on `_INBOX.<connection nuid>.<token>`)."""
    return msg.reply.rsplit(".", 1)[0] if msg.reply else "no-reply"


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # not inside Ray (unit use): no node to name
        return ""

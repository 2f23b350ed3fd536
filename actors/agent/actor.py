"""The agent actor: one detached Ray actor per agent, the single writer of that agent's log.

Ray rebuilds a dead actor by running its constructor again, so the constructor *is* recovery:
it folds the log (snapshot plus tail), re-adopts the tmux session that outlived the old worker
(or records why it cannot), and answers `fleet.cmd.<id>` again. Every command is decided,
appended, applied, then acted on (dispatch.py); what acting finds out is appended as events
too. What the helpers share of the agent is its `AgentContext` (context.py), `self.ctx`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError

from actors.agent.config import AgentConfig
from actors.agent.confine import assign_user, check_installed, probe, recall, recorded_spec
from actors.agent.confine import remember as remember_secrets
from actors.agent.context import AgentContext
from actors.agent.dedupe import load_applied
from actors.agent.devservices import adopt_services
from actors.agent.dispatch import act
from actors.agent.envelope import BUSY_AFTER_S, busy_budget, request_id, sender, verb
from actors.agent.hookcalls import HookDesk
from actors.agent.ids import new_id
from actors.agent.recovery import migrate_legacy
from actors.agent.steps import bring_up, output, stop, undo_spawn
from actors.agent.watchers import start_watching
from actors.names import SUPERVISOR
from infra import errorlog, heap, priority, registry
from infra.eventstore import EventStore
from infra.nats import connect
from infra.tmux import Tmux
from infra.worktree import Worktrees
from schemas import commands as c
from schemas import replies, subjects
from schemas.control import SpawnRequest
from schemas.errors import FleetError, UnknownAgent
from schemas.ratelimit import RateLimiter
from schemas.states import LIVE, Lifecycle
from schemas.templates import Template

log = logging.getLogger(__name__)

L = Lifecycle


class AgentActor:
    """Created with an agent id (a cold spawn), or bare for the warm pool and bound later."""

    async def __init__(  # type: ignore[misc]  # Ray runs async constructors
        self, config: AgentConfig, agent_id: str | None = None, slot: str | None = None
    ) -> None:
        self.config = config
        errorlog.install(config.state_dir)
        priority.favour_this_thread()  # commands before Ray's own timers
        tmux = Tmux(config.tmux_socket, shell=config.window_shell)
        self.nc = await connect(config.nats_url, name=f"fleet-agent-{agent_id or 'pool'}")
        store = EventStore(self.nc, mac_key=config.mac_key)
        self.ctx = AgentContext(config, tmux, self.nc, store, _node_id(), self.handle)
        self.sub: Subscription | None = None
        self.hook_sub: Subscription | None = None  # its assistant's hooks (hookcalls.py)
        self.inflight: dict[str, asyncio.Future[bytes]] = {}  # ids of commands being done
        self.limiter = RateLimiter(config.cmd_rate, config.cmd_burst, "commands")
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
        ctx = self.ctx
        if ctx.state.agent_id:
            raise FleetError(f"this actor already serves agent {ctx.state.agent_id}")
        subjects.token(agent_id)
        if self.slot is not None:  # written first: a restarted pool actor must find its agent
            kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
            await kv.put(self.slot, agent_id.encode())
        loaded = await ctx.store.load(agent_id)
        ctx.state, ctx.position = loaded.state, loaded.position
        ctx.applied = await load_applied(ctx.store, agent_id, ctx.position.seq)
        self.sub = await self.nc.subscribe(subjects.command(agent_id), cb=self._on_command)
        desk = HookDesk(ctx)
        self.hook_sub = await self.nc.subscribe(subjects.hook(agent_id), cb=desk.on_message)
        await self.nc.flush()
        ctx.heartbeat.start()
        if ctx.state.lifecycle is not L.NEW:
            await recall(ctx)
            if ctx.state.worktree:
                await assign_user(ctx, Path(ctx.state.worktree), hand_over=False)
                await migrate_legacy(ctx)  # an older linked worktree: its own repo
            await self._adopt()

    async def _adopt(self) -> None:
        """After a restart: carry on with what the log says this agent was doing."""
        ctx = self.ctx
        async with ctx.lock.step("re-adopting its session after a restart"):
            lifecycle = ctx.state.lifecycle
            if lifecycle in (L.RUNNING, L.PAUSED):
                if ctx.tmux.has_session(ctx.state.tmux_session):
                    start_watching(ctx)
                    await adopt_services(ctx)
                    return
                await ctx.fail("its tmux session is gone (the tmux server died or was killed)")
            elif lifecycle is L.SPAWNING:
                await undo_spawn(ctx)
                await ctx.fail("spawning was interrupted by a restart of its actor")
            elif lifecycle is L.STOPPING:
                await stop(ctx, polite=False)

    def agent_id(self) -> str:
        return self.ctx.state.agent_id

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
        self.ctx.template = template

    def where(self) -> dict[str, Any]:
        return {"node": self.ctx.node, "pid": os.getpid()}

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
            template_spec=recorded_spec(spec),  # secrets redacted in the log
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
        await asyncio.to_thread(check_installed, spec, template_command, request.env)
        ctx = self.ctx
        async with ctx.lock.step("spawning"):
            await ctx.execute(create)
            await remember_secrets(ctx, spec, request.env)
            await bring_up(ctx)

    async def handle(self, cmd: c.AgentCommand, within: float = BUSY_AFTER_S) -> bytes:
        """Answer one command with the reply bytes; domain refusals raise FleetError.

        A writing command waits at most `within` seconds for the step in progress (a slow
        stop, a checkpoint) to end, then is refused as busy, having done nothing."""
        ctx = self.ctx
        if (ctx.state.lifecycle is L.NEW or ctx.state.removed) and not isinstance(cmd, c.Create):
            raise UnknownAgent(ctx.state.agent_id)
        match cmd:
            case c.Show():
                return replies.ok(agent=self.show())
            case c.Output(lines=lines, window=window):
                return replies.ok(output=await output(ctx, window, lines))
            case c.ProbeSandbox():
                return replies.ok(probes=await probe(ctx))
        cmd = cmd if cmd.id else msgspec.structs.replace(cmd, id=new_id())
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
        ctx = self.ctx
        async with ctx.lock.within(within, ctx.state.agent_id, verb(cmd)):
            if cmd.id in ctx.applied:  # a retry (same id) of a command already done
                return replies.ok(agent=self.show(), repeated=True)
            extra = await act(ctx, cmd)
        return replies.ok(agent=self.show(), **extra)

    def show(self) -> dict[str, Any]:
        return self.ctx.show()

    async def _on_command(self, msg: Msg) -> None:
        # Each request gets its own task, so `show` answers while a slow `stop` runs; the
        # lock keeps the writing commands one at a time.
        asyncio.get_running_loop().create_task(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        try:
            self.limiter.check(sender(msg), time.monotonic())
            reply = await self._reply(msg.data, msg.reply, msg.headers)
        except FleetError as e:
            reply = replies.error(e)
        if msg.reply:
            await msg.respond(reply)
        if self.ctx.state.removed:
            await self._retire()

    async def forwarded(self, data: bytes, reply_to: str, headers: dict[str, str] | None) -> bytes:
        """A command the supervisor took off `fleet.cmd.<id>` while this actor may have been
        off NATS (right after a NATS restart the supervisor can be back first, and a request
        then reaches only it): the reply, for the supervisor to send. Had this actor got the
        same request itself, both copies carry the same id (`_reply`) and it is done once."""
        reply = await self._reply(data, reply_to, headers)
        if self.ctx.state.removed:
            asyncio.get_running_loop().create_task(self._retire())
        return reply

    async def _reply(self, data: bytes, reply_to: str, headers: dict[str, str] | None) -> bytes:
        try:
            cmd: c.AgentCommand = replies.decode_request(data, c.AgentCommand, "command")
            if not cmd.id and reply_to:  # one request, one id, by whichever way it came
                cmd = msgspec.structs.replace(cmd, id=request_id(reply_to))
            return await self.handle(cmd, busy_budget(headers))
        except Exception as e:  # noqa: BLE001 (the one error boundary: infra/errorlog.py)
            return errorlog.reply_to(e, log, f"agent {self.agent_id()}: command")

    async def _retire(self) -> None:
        """A removed agent's actor lets go of everything and ends, for good."""
        await self.close()
        await registry.remove(self.nc, self.agent_id())
        await self._supervisor_forgets()
        if self.slot is not None:
            kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
            await kv.delete(self.slot)
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _supervisor_forgets(self) -> None:
        """Tell the supervisor, so it answers this id with unknown_agent from now on."""
        import ray

        try:
            supervisor = ray.get_actor(SUPERVISOR, namespace=self.config.namespace)
        except ValueError:  # no supervisor (yet): it will not find this agent in the log
            return
        await supervisor.forget.remote(self.agent_id())

    async def let_go(self) -> None:
        """Its spawn was refused before anything was recorded: drop the binding (the pool
        slot's too) and NATS, for the supervisor to end this actor."""
        if self.ctx.state.lifecycle is not L.NEW:
            raise FleetError(f"agent {self.agent_id()} has a log; it is not let go")
        await self.close()
        if self.slot is not None:
            kv = await self.nc.jetstream().key_value(subjects.SLOTS_BUCKET)
            await kv.delete(self.slot)

    async def close(self) -> None:
        """Let go of NATS (the tmux session lives on); used before the actor is killed."""
        self.ctx.stop_watching()
        self.ctx.heartbeat.stop()
        for sub in (self.sub, self.hook_sub):
            if sub is not None:
                await sub.unsubscribe()
        self.sub = self.hook_sub = None
        await self.nc.flush()

    def is_live(self) -> bool:
        return self.ctx.state.lifecycle in LIVE


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 (not inside Ray, in unit use: no node to name)
        return ""

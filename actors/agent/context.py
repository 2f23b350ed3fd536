"""The one thing an agent's helpers share: `AgentContext`, what they may use of the agent.

`AgentActor` (actors/agent/actor.py) is the Ray actor and answers NATS; everything it does to
the world is done by helper modules (steps, checkpoints, confine, dev services, ...), and each
of them takes this context, never the actor. It holds the agent's resources (settings, NATS,
the event store, tmux, the writer's lock), the fold of its log (`state`, `position`) and what
the steps learn along the way (its template, its sandbox user, its dev services, its monitor,
its watchdog). Writing to the log goes through `execute` and `record` only: decide, append,
evolve, in that order, one step at a time under `lock`.

Nothing here imports the helpers: the monitor, the dev services and the watchers sit above it
and are named for their types alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client

from actors.agent.config import AgentConfig
from actors.agent.dedupe import Applied
from actors.agent.ids import new_id, now
from actors.agent.steplock import StepLock
from infra import registry, treestat
from infra.eventstore import EventStore
from infra.tmux import Tmux
from infra.worktree import Worktrees
from schemas import commands as c
from schemas.agent import AgentState, decide
from schemas.chain import Position
from schemas.control import view
from schemas.discovery import RegistryEntry, entry
from schemas.errors import ConcurrentUpdate
from schemas.events import AgentEvent
from schemas.states import Lifecycle
from schemas.templates import Template, decode_spec

if TYPE_CHECKING:
    from actors.agent.devservices import DevServices
    from actors.agent.monitor import ActivityMonitor

Submit = Callable[[c.AgentCommand], Awaitable[bytes]]


class AgentContext:
    """One agent's resources, the fold of its log, and what its steps have learnt.

    `submit` sends one of the agent's own commands the way a person's goes (the lock within
    a budget, decide, act): the resource watchdog restarts or stops its agent so."""

    def __init__(
        self,
        config: AgentConfig,
        tmux: Tmux,
        nc: Client,
        store: EventStore,
        node: str,
        submit: Submit,
    ) -> None:
        self.config, self.tmux, self.nc, self.store, self.node = config, tmux, nc, store, node
        self.submit = submit
        self.lock = StepLock()  # one writer step at a time: decide, append, evolve, act
        self.state = AgentState()
        self.position = Position()
        self.applied = Applied()  # ids of commands already done: a retry is not redone
        self.heartbeat = registry.Heartbeat(nc, self.registry_entry, config.heartbeat_s)
        self.template: Template | None = None  # the resolved template, set before bring_up
        self.extra_env: dict[str, str] = {}  # env given at spawn (kept in infra/secretstore.py)
        self.secrets_loaded = False
        self.sandbox_uid: int | None = None  # its processes' own user (confine.py)
        self.known_files: treestat.Known | None = None  # as a checkpoint saw them
        self.services: DevServices | None = None  # this incarnation's dev services
        self.monitor: ActivityMonitor | None = None  # its screen watch (monitor.py)
        self.interval: asyncio.Task[None] | None = None  # interval checkpoints (checkpoints.py)
        self.watchdog: asyncio.Task[None] | None = None  # its resource limits' (limitwatch.py)

    @property
    def agent_id(self) -> str:
        return self.state.agent_id

    # -- the writer's step (the lock held) ---------------------------------------------------

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

    async def fail(self, reason: str) -> None:
        """ERROR with `reason`, its watchers stopped first."""
        self.stop_watching()
        await self.execute(c.Fail(reason=reason, by="agent"))

    def meta(self, cause: str = "") -> dict[str, Any]:
        """The common fields of an event the agent's actor records (`causation`: a command id)."""
        return {
            "agent_id": self.state.agent_id,
            "event_id": new_id(),
            "at": now(),
            "actor": "agent",
            "causation": cause,
        }

    # -- what runs beside the session --------------------------------------------------------

    def stop_watching(self) -> None:
        """End the screen monitor and the interval checkpoints (watchers.py starts them)."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if self.interval is not None and self.interval is not asyncio.current_task():
            self.interval.cancel()
        self.interval = None

    # -- what the state says -----------------------------------------------------------------

    def worktrees(self) -> Worktrees:
        """The agent's repository, as fleetd's own git (not jailed: checkpoints.py's is)."""
        return Worktrees(self.state.repo, self.config.worktree_root)

    def resolved_template(self) -> Template | None:
        """Its real template (secrets in it), else the one its log recorded (redacted)."""
        return self.template or decode_spec(self.state.template_spec)

    def show(self) -> dict[str, Any]:
        shown = view(self.state, seq=self.position.seq, node=self.node, pid=os.getpid())
        found: dict[str, Any] = msgspec.to_builtins(shown)
        return found

    def registry_entry(self) -> RegistryEntry | None:
        if self.state.lifecycle is Lifecycle.NEW or self.state.removed:
            return None
        return entry(self.state, self.node, now())

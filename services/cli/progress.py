"""A spinner line on stderr while a long command runs, showing the step each agent is at.

The steps are the agents' own events (`workspace.ready`, `session.started`,
`service.started web`, `RUNNING`, ...), read from the stream while the command waits for its
reply, only those that verify (services/cli/follow.py; none without the fleet key). Only on
a terminal: on anything else nothing is read and nothing is written, so scripts and logs see
only the command's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from schemas import events as e
from schemas.states import Lifecycle
from services.cli import follow, style

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TICK_S = 0.1
_DONE = (Lifecycle.RUNNING, Lifecycle.STOPPED, Lifecycle.ERROR, Lifecycle.PAUSED)


def step(event: e.AgentEvent) -> str:
    """An event as a step: the lifecycle it reached, else its tag (and service, if any)."""
    if isinstance(event, e.LifecycleChanged):
        return event.to.value
    tag: str = type(event).__struct_config__.tag  # type: ignore[assignment]
    service = getattr(event, "service", "")
    return f"{tag} {service}" if service else tag


class Progress:
    """`async with Progress(nc, ["a1"], "spawning"):` around the request that waits."""

    def __init__(
        self, nc: Client, agents: list[str], label: str, stream: TextIO | None = None
    ) -> None:
        self.nc = nc
        self.agents = agents
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = style.is_terminal(self.stream)
        self.steps: dict[str, str] = dict.fromkeys(agents, "waiting")
        self.done: set[str] = set()
        self.started = time.monotonic()
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Progress:
        if not self.enabled:
            return self

        # Only events that verify (services/cli/follow.py); without the key, no steps.
        key = follow.fleet_key()
        self._subs = await follow.follow(self.nc, self.agents, self.saw, self.label, key)
        self._task = asyncio.create_task(self._spin())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self.stream.write(style.CLEAR_LINE)
            self.stream.flush()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def saw(self, event: e.AgentEvent) -> None:
        if event.agent_id not in self.steps:
            return
        self.steps[event.agent_id] = step(event)
        if isinstance(event, e.LifecycleChanged) and event.to in _DONE:
            self.done.add(event.agent_id)
        elif isinstance(event, e.LifecycleChanged):
            self.done.discard(event.agent_id)

    def line(self, frame: int = 0) -> str:
        """What the spinner shows now, cut to the terminal's width."""
        elapsed = time.monotonic() - self.started
        spinner = FRAMES[frame % len(FRAMES)]
        if len(self.agents) == 1:
            (agent,) = self.agents
            text = f"{spinner} {self.label} {agent}: {self.steps[agent]}  {elapsed:.1f} s"
        else:
            steps = "  ".join(f"{a}: {s}" for a, s in self.steps.items() if a not in self.done)
            count = f"{len(self.agents)} agents, {len(self.done)} done"
            text = f"{spinner} {self.label} {count}  {elapsed:.1f} s  {steps}"
        return style.clip(text.rstrip(), style.terminal_width() - 1)

    async def _spin(self) -> None:
        frame = 0
        while True:
            self.stream.write(style.CLEAR_LINE + self.line(frame))
            self.stream.flush()
            frame += 1
            await asyncio.sleep(TICK_S)

"""The agent's writer lock, which knows what its holder is doing.

One step at a time writes an agent's log (decide, append, evolve, act). A command that waits
behind a long step (a polite stop, a checkpoint of a big worktree, a restart) must not wait
past its sender's patience in silence: `within` gives up in time and raises `AgentBusy`,
whose sentence names the step that holds the agent and for how long it has held it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from schemas.errors import AgentBusy


class StepLock:
    """An asyncio.Lock with the holder's description; `async with lock:` still works."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.doing = ""
        self.since = 0.0

    def locked(self) -> bool:
        return self._lock.locked()

    def held_for(self) -> float:
        return time.monotonic() - self.since if self._lock.locked() else 0.0

    def now_doing(self, what: str) -> None:
        """The holder says what it has moved on to (shown in a busy refusal)."""
        if self._lock.locked():
            self.doing = what

    async def __aenter__(self) -> StepLock:
        await self._take("working")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    @asynccontextmanager
    async def step(self, what: str) -> AsyncIterator[None]:
        """Hold the lock for a step named `what`, waiting as long as it takes."""
        await self._take(what)
        try:
            yield
        finally:
            self._release()

    @asynccontextmanager
    async def within(self, timeout: float, agent_id: str, verb: str) -> AsyncIterator[None]:
        """Hold the lock for command `verb`, or raise `AgentBusy` if it is not free within
        `timeout` (having taken nothing)."""
        try:
            await asyncio.wait_for(self._take(f"with {verb}"), timeout)
        except TimeoutError:
            raise AgentBusy(agent_id, verb, self.doing or "working", self.held_for()) from None
        try:
            yield
        finally:
            self._release()

    async def _take(self, what: str) -> None:
        await self._lock.acquire()
        self.doing, self.since = what, time.monotonic()

    def _release(self) -> None:
        self.doing = ""
        self._lock.release()

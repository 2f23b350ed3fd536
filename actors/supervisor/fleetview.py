"""The fleet's list, folded from the log: how `fleet.ctl.list` answers without asking 200 actors.

An agent's state is the fold of its events, so the supervisor can keep every agent's view by
following FLEET_EVENTS itself (an ordered consumer from the first event), as the health service
and the gateway do. Asking each actor instead costs a Ray call per agent per list (about 90 ms
for 200 agents on 2 cores). A list first asks the stream for its last sequence and waits until
the fold has applied it, so an answer never lags a reply its caller already had. Where each
actor runs (node, pid) is not in the log: it is asked of the actor once and refreshed in the
background, at most every REFRESH_S.

With the fleet key, an event that does not verify (Fleet-Mac, chain: infra/eventfollow.py's
`LiveCheck`) is refused: logged, counted in `refused`, and never folded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.eventfollow import LiveCheck, read_stream
from infra.eventscan import EventReader
from schemas import events as e
from schemas import subjects
from schemas.agent import AgentState, evolve, initial
from schemas.control import ActorView, view

log = logging.getLogger(__name__)

CATCH_UP_S = 2.0  # a guard: past it the list is answered from what has been folded so far
REFRESH_S = 5.0

_decoder = msgspec.json.Decoder(e.AgentEvent)
Ask = Callable[[str], Awaitable[ActorView | None]]


class FleetView:
    """Every agent's state and last sequence, kept current from the event stream."""

    def __init__(self, nc: Client, mac_key: bytes | None = None) -> None:
        self.js = nc.jetstream()
        self.check = LiveCheck(
            EventReader(nc, self.js, mac_key=mac_key), "fleet view", from_start=True
        )
        self.states: dict[str, AgentState] = {}
        self.seqs: dict[str, int] = {}
        self.actors: dict[str, ActorView] = {}
        self.applied = 0  # the last stream sequence folded
        self._moved = asyncio.Condition()
        self._refreshed = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await read_stream(self.js, self._on_event, from_start=True)

    async def _on_event(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if await self.check.passes_msg(msg):  # refused: logged, and the fold moves past it
            self._fold(subjects.agent_from_events(msg.subject), seq, msg.data)
        self.applied = seq
        async with self._moved:
            self._moved.notify_all()

    def _fold(self, agent_id: str, seq: int, raw: bytes) -> None:
        try:
            event = _decoder.decode(raw)
        except msgspec.DecodeError as err:  # evolve never sees it; the audit reports it
            log.warning("event log sequence %d skipped in the fleet view: %s", seq, err)
            return
        self.states[agent_id] = evolve(self.states.get(agent_id, initial(agent_id)), event)
        self.seqs[agent_id] = seq

    async def caught_up(self) -> bool:
        """Wait until every event the stream held when asked is folded (False past the guard)."""
        info = await self.js.stream_info(subjects.EVENTS_STREAM)
        last = info.state.last_seq
        try:
            async with asyncio.timeout(CATCH_UP_S), self._moved:
                await self._moved.wait_for(lambda: self.applied >= last)
        except TimeoutError:
            log.warning("fleet view behind the stream (%d < %d)", self.applied, last)
            return False
        return True

    def views(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The views of `ids` that the log knows, in id order."""
        shown = []
        for agent_id in sorted(ids):
            state = self.states.get(agent_id)
            if state is None:
                continue
            actor = self.actors.get(agent_id, ActorView())
            found = view(state, seq=self.seqs[agent_id], node=actor.node, pid=actor.pid)
            shown.append(msgspec.to_builtins(found))
        return shown

    def refresh(self, ids: Iterable[str], ask: Ask) -> None:
        """Learn where the actors of `ids` run: at once for new ones, else every REFRESH_S."""
        wanted = list(ids)
        stale = time.monotonic() - self._refreshed > REFRESH_S
        todo = wanted if stale else [a for a in wanted if a not in self.actors]
        if not todo or (self._refreshing is not None and not self._refreshing.done()):
            return
        self._refreshed = time.monotonic()
        self._refreshing = asyncio.get_running_loop().create_task(self._ask_all(todo, ask))

    async def _ask_all(self, ids: list[str], ask: Ask) -> None:
        found = await asyncio.gather(*(ask(a) for a in ids), return_exceptions=True)
        for agent_id, where in zip(ids, found, strict=True):
            if isinstance(where, ActorView):
                self.actors[agent_id] = where

    def forget(self, agent_id: str) -> None:
        self.actors.pop(agent_id, None)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._refreshing is not None:
            self._refreshing.cancel()

"""Live events to WebSocket clients, batched so a busy fleet cannot flood a browser.

One reader of the events stream feeds every client of the gateway. Each client has
a filter (some agents, or all) and a buffer; its writer sends what gathered as one message
(`{"events": [<event JSON>, ...]}`), then waits `BATCH_S` before the next send. A quiet fleet's
event goes out at once (the leading edge); a busy one's are grouped, at most one message per
window per client. A client that cannot keep up loses its oldest buffered events and is told
how many (`"dropped": n`), so it can reload from `GET /api/agents`.

Health samples (`fleet.health.<agent>` observations of kind `sample`: CPU and memory of the
agent's process tree) ride in the same messages as `"health": [<observation>, ...]`, only the
latest per agent since the last send: a dashboard of 200 agents gets at most 200 per window,
however often the health service samples. The hub keeps each agent's latest for
`GET /api/health`.

The feed is an ordered consumer of FLEET_EVENTS from what is stored next (`follow`), not a
core subscription on `fleet.evt.>`: a core subscriber sees every publish on the subject, also
one that JetStream refused and never stored (a stale or forged append). Each event is checked
with the fleet key before any client gets it (`LiveCheck`: Fleet-Mac and chain); one that does
not verify is dropped for every client, logged with the agent, sequence and why, and counted
(`Hub.check.refused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from infra.eventfollow import LiveCheck, read_stream
from infra.eventscan import EventReader
from schemas import subjects

log = logging.getLogger(__name__)

BATCH_S = 0.025  # at most 40 messages a second per client, each with everything since the last
MAX_BUFFERED = 5000  # events kept for a slow client before the oldest are dropped
REMOVED = b'"type":"agent.removed"'  # msgspec writes JSON without spaces


@dataclass(eq=False)
class Listener:
    ws: web.WebSocketResponse
    agents: frozenset[str] | None  # None: every agent
    buffer: list[bytes] = field(default_factory=list)
    dropped: int = 0
    samples: dict[str, bytes] = field(default_factory=dict)  # agent -> its latest, unsent
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, raw: bytes) -> None:
        self.buffer.append(raw)
        if len(self.buffer) > MAX_BUFFERED:
            excess = len(self.buffer) - MAX_BUFFERED
            del self.buffer[:excess]
            self.dropped += excess
        self.wake.set()

    def push_sample(self, agent: str, raw: bytes) -> None:
        self.samples[agent] = raw
        self.wake.set()

    def pending(self) -> bool:
        return bool(self.buffer or self.samples)

    def take(self) -> str:
        batch, self.buffer = self.buffer, []
        dropped, self.dropped = self.dropped, 0
        head = f'{{"dropped":{dropped},"events":[' if dropped else '{"events":['
        out = head + b",".join(batch).decode() + "]"
        if self.samples:
            samples, self.samples = self.samples, {}
            out += ',"health":[' + b",".join(samples.values()).decode() + "]"
        return out + "}"


class Hub:
    """The gateway's listeners, fed by `on_msg` (the `fleet.evt.>` subscription's callback)."""

    def __init__(self) -> None:
        self.listeners: set[Listener] = set()
        self.by_agent: dict[str, set[Listener]] = {}
        self.everyone: set[Listener] = set()
        self.samples: dict[str, bytes] = {}  # agent -> its latest sample observation (JSON)
        self.check: LiveCheck | None = None  # set by `follow`

    async def follow(self, reader: EventReader) -> Subscription:
        """Feed the clients from the events stream: each event stored from now on that
        verifies with `reader`'s fleet key."""
        check = self.check = LiveCheck(reader, "gateway event feed")

        async def on_stored(msg: Msg) -> None:
            try:
                passed = await check.passes_msg(msg)
            except Exception:  # its chain could not be read: dropped, never shown unchecked
                log.exception("gateway event feed: %s not checked; dropped", msg.subject)
                return
            if passed:
                await self.on_msg(msg)

        return await read_stream(reader.js, on_stored, from_start=False)

    async def on_msg(self, msg: Msg) -> None:
        agent = msg.subject.rpartition(".")[2]
        for listener in self.everyone:
            listener.push(msg.data)
        for listener in self.by_agent.get(agent, ()):
            listener.push(msg.data)
        if REMOVED in msg.data:
            self.samples.pop(agent, None)  # a removed agent's last sample is not news

    def on_sample(self, agent: str, raw: bytes) -> None:
        """A health sample of `agent` (a `fleet.health.<agent>` observation, as JSON)."""
        self.samples[agent] = raw
        for listener in self.everyone:
            listener.push_sample(agent, raw)
        for listener in self.by_agent.get(agent, ()):
            listener.push_sample(agent, raw)

    def add(self, listener: Listener) -> None:
        self.listeners.add(listener)
        if listener.agents is None:
            self.everyone.add(listener)
        else:
            for agent in listener.agents:
                self.by_agent.setdefault(agent, set()).add(listener)

    def remove(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        self.everyone.discard(listener)
        for agent in listener.agents or ():
            group = self.by_agent.get(agent)
            if group is not None:
                group.discard(listener)
                if not group:
                    del self.by_agent[agent]

    async def serve(self, request: web.Request, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        """`/ws/events?agent=a1&agent=a2` (or `agent=a1,a2`; none: every agent) on `ws`, which
        is not prepared yet; it ends when the client leaves or `ws` is closed by the gateway."""
        wanted = [a for v in request.query.getall("agent", []) for a in v.split(",") if a]
        agents = frozenset(subjects.token(a) for a in wanted) or None
        listener = Listener(ws, agents)
        # Listening before the handshake is answered: whatever happens once a client is
        # connected reaches it (it is buffered until the writer starts).
        self.add(listener)
        try:
            await ws.prepare(request)
        except BaseException:
            self.remove(listener)
            raise
        writer = asyncio.create_task(_write(listener))
        try:
            async for msg in ws:  # the client says nothing we act on; this notices it leaving
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.remove(listener)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws


async def _write(listener: Listener) -> None:
    try:
        while not listener.ws.closed:
            await listener.wake.wait()
            listener.wake.clear()
            if listener.pending():
                await listener.ws.send_str(listener.take())
            await asyncio.sleep(BATCH_S)
    except ConnectionResetError:
        log.debug("an event WebSocket went away mid-send")

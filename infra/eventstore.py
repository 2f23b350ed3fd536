"""The event store: each agent's log on JetStream, with checked appends, snapshots and replay.

Protocol facts this module relies on:
- `Nats-Expected-Last-Subject-Sequence: N` makes the server refuse a publish unless the last
  message on that subject has sequence N (0 = no message yet), with API error 10071. That is
  the optimistic concurrency check: a stale writer is refused instead of forking history.
- `Nats-Msg-Id` de-duplicates within the stream's duplicate window: a retried append is acked
  again with `duplicate: true` and the first copy's sequence, and stored once.
- `Fleet-Mac` (ours) is HMAC-SHA256 of the payload with the fleet key (infra/fleetkey.py): the
  hash chain shows that nothing was altered, the MAC that the agent's own actor wrote it.

Reading and scanning a log is infra/eventscan.py; following the stream, infra/eventfollow.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from msgspec.structs import replace
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from infra.eventfollow import Following
from infra.eventscan import (
    REQUEST_TIMEOUT_S,
    SNAPSHOT_EVERY,
    EventReader,
    Stored,
    decode,
    event_decoder,
)
from schemas import subjects
from schemas.agent import AgentState, evolve, initial
from schemas.audit import MAC_HEADER, event_mac
from schemas.chain import SNAPSHOT_VERSION, Position, Snapshot, event_hash
from schemas.errors import ConcurrentUpdate, StoreUnavailable
from schemas.events import AgentEvent

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream API error: Nats-Expected-Last-Subject-Sequence failed
INSUFFICIENT_RESOURCES = 10023  # JetStream API error: the store's limit (or disk) is reached

_encode = msgspec.json.Encoder().encode
_snapshot_decoder = msgspec.json.Decoder(Snapshot)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: the stored sequence, or an error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


@dataclass(slots=True)
class Loaded:
    state: AgentState
    position: Position
    skipped: list[Stored] = field(default_factory=list)  # undecodable events, reported


class EventStore(EventReader, Following):
    """Appends and loads agents' logs. One per process; cheap to share between tasks."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext | None = None,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        mac_key: bytes | None = None,
    ) -> None:
        super().__init__(nc, js)
        self.mac_key = mac_key  # signs appends (Fleet-Mac) when set: only agent actors have it
        self.snapshot_every = snapshot_every
        self._kv: KeyValue | None = None

    # -- writing --------------------------------------------------------------------------

    async def append(
        self, agent_id: str, events: Sequence[AgentEvent], expected: Position
    ) -> Position:
        """Append `events` after `expected`; raise `ConcurrentUpdate` if the log moved on.

        A retried append (same event ids, e.g. after a lost acknowledgement) is recognised and
        stored once: the server checks the expected sequence before the Nats-Msg-Id dedupe,
        so a refusal is answered by reading what follows `expected` and comparing event ids.
        """
        subject = subjects.events(agent_id)
        position = expected
        for i, event in enumerate(events):
            raw = _encode(replace(event, prev_hash=position.hash))
            try:
                seq = await self._publish(agent_id, subject, raw, event.event_id, position.seq)
            except ConcurrentUpdate:
                stored = await self._already_stored(agent_id, events[i:], position)
                if stored is None:
                    raise
                return await self.append(agent_id, events[i + len(stored) :], stored[-1])
            position = Position(seq, event_hash(raw))
        return position

    async def _publish(self, agent_id: str, subject: str, raw: bytes, msg_id: str, seq: int) -> int:
        # A plain request, not js.publish: the ack is decoded by msgspec, which is most of
        # what keeps a checked append as fast as an unchecked raw publish.
        headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(seq)}
        if self.mac_key is not None:
            headers[MAC_HEADER] = event_mac(self.mac_key, raw)
        try:
            reply = await self.nc.request(subject, raw, timeout=REQUEST_TIMEOUT_S, headers=headers)
        except TimeoutError as e:
            raise StoreUnavailable(
                f"cannot append to agent {agent_id}'s log: JetStream did not acknowledge it in"
                f" {REQUEST_TIMEOUT_S:.0f} s (the NATS server is down or restarting, or the disk"
                " under its store is full); retrying the same events is safe"
            ) from e
        except NoRespondersError as e:
            raise StoreUnavailable(
                f"cannot append to agent {agent_id}'s log: no JetStream stream listens on {subject}"
            ) from e
        ack = _ack_decoder.decode(reply.data)
        if ack.error is not None:
            if ack.error.err_code == WRONG_LAST_SEQUENCE:
                raise ConcurrentUpdate(agent_id, seq)
            if ack.error.err_code == INSUFFICIENT_RESOURCES:
                raise StoreUnavailable(
                    f"cannot append to agent {agent_id}'s log: the JetStream store is full"
                    f" (JetStream error {INSUFFICIENT_RESOURCES}, {ack.error.description});"
                    " free space under the NATS store, then retry"
                )
            raise StoreUnavailable(
                f"cannot append to agent {agent_id}'s log: {ack.error.description}"
                f" (JetStream error {ack.error.err_code})"
            )
        return ack.seq

    async def _already_stored(
        self, agent_id: str, events: Sequence[AgentEvent], after: Position
    ) -> list[Position] | None:
        """Positions of the leading `events` found right after `after`, or None if others are."""
        rows = await self._direct_batch(subjects.events(agent_id), after.seq + 1, len(events))
        found: list[Position] = []
        for (seq, raw, _mac), event in zip(rows, events, strict=False):
            stored = decode(seq, raw).event
            if stored is None or stored.event_id != event.event_id:
                break
            found.append(Position(seq, event_hash(raw)))
        return found or None

    async def record(
        self, state: AgentState, events: Sequence[AgentEvent], position: Position
    ) -> tuple[AgentState, Position]:
        """Append, then evolve, then snapshot when due: the writer's whole bookkeeping step."""
        if not events:
            return state, position
        position = await self.append(state.agent_id, events, position)
        before = state.events
        for event in events:
            state = evolve(state, event)
        if state.events // self.snapshot_every > before // self.snapshot_every:
            await self.save_snapshot(state, position)
        return state, position

    async def save_snapshot(self, state: AgentState, position: Position) -> None:
        kv = await self._snapshots()
        await kv.put(state.agent_id, _encode(Snapshot(state=state, position=position)))

    # -- reading --------------------------------------------------------------------------

    async def load(self, agent_id: str) -> Loaded:
        """The agent's state: its snapshot (if any) plus the events after it."""
        snapshot = await self.read_snapshot(agent_id)
        if snapshot is None:
            return await self.replay(agent_id)
        return await self.replay(agent_id, start=snapshot.state, position=snapshot.position)

    async def replay(
        self,
        agent_id: str,
        *,
        start: AgentState | None = None,
        position: Position = Position(),  # noqa: B008 - an immutable Struct
        upto: int | None = None,
    ) -> Loaded:
        """Fold the log after `position` (the whole log by default), up to sequence `upto`."""
        loaded = Loaded(start or initial(agent_id), position)
        state = loaded.state
        last: tuple[int, bytes] | None = None

        def on_row(seq: int, raw: bytes) -> None:
            nonlocal state, last
            last = (seq, raw)
            try:
                state = evolve(state, event_decoder.decode(raw))
            except msgspec.DecodeError:
                loaded.skipped.append(decode(seq, raw))

        await self.scan(agent_id, on_row, after=position.seq, upto=upto)
        loaded.state = state
        if last is not None:
            loaded.position = Position(last[0], event_hash(last[1]))
        return loaded

    async def read_snapshot(self, agent_id: str) -> Snapshot | None:
        kv = await self._snapshots()
        try:
            entry = await kv.get(subjects.token(agent_id))
        except KeyNotFoundError:
            return None
        try:
            snapshot = _snapshot_decoder.decode(entry.value or b"")
        except msgspec.DecodeError as e:
            log.warning("snapshot of agent %s ignored (a full replay follows): %s", agent_id, e)
            return None
        return snapshot if snapshot.version == SNAPSHOT_VERSION else None

    # -- plumbing ---------------------------------------------------------------------------

    async def _snapshots(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.SNAPSHOTS_BUCKET)
        return self._kv

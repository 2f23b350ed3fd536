"""The event store: each agent's log on JetStream, with checked appends, snapshots and replay.

Protocol facts this module relies on:
- `Nats-Expected-Last-Subject-Sequence: N` makes the server refuse a publish unless the last
  message on that subject has sequence N (0 = no message yet), with API error 10071. That is
  the optimistic concurrency check: a stale writer is refused instead of forking history.
- `Nats-Msg-Id` de-duplicates within the stream's duplicate window: a retried append is acked
  again with `duplicate: true` and the first copy's sequence, and stored once.
- `Fleet-Mac` (ours) is HMAC-SHA256 of the payload with the fleet key (infra/fleetkey.py): the
  hash chain shows that nothing was altered, the MAC that the agent's own actor wrote it.
  A store given the key refuses, on every load and replay, an event that does not verify
  (schemas/eventcheck.py): it is not folded, and `Loaded.refused` says which and why.
- A snapshot is the KV entry `$KV.fleet_snapshots.<agent>`, written with its own `Fleet-Mac`
  header (HMAC of the entry's value); a store with the key ignores one without a valid MAC, or
  of another agent, and replays the log instead. Agents' NATS users cannot publish there.

Reading and scanning a log is infra/eventscan.py; following the stream, infra/eventfollow.py.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from msgspec.structs import replace
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from infra.eventfollow import Following
from infra.eventscan import (
    REQUEST_TIMEOUT_S,
    SNAPSHOT_EVERY,
    Stored,
    decode,
    event_decoder,
    report_refused,
)
from schemas import subjects
from schemas.agent import AgentState, evolve, initial
from schemas.audit import MAC_HEADER, event_mac
from schemas.chain import GENESIS, SNAPSHOT_VERSION, Position, Snapshot, event_hash
from schemas.errors import ConcurrentUpdate, StoreUnavailable
from schemas.eventcheck import ChainCheck, Refusal
from schemas.events import AgentEvent

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream API error: Nats-Expected-Last-Subject-Sequence failed
INSUFFICIENT_RESOURCES = 10023  # JetStream API error: the store's limit (or disk) is reached
FOREIGN_PASSES = 8  # appends that may each meet a newly stored forgery before one is refused

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
    refused: list[Refusal] = field(default_factory=list)  # events that do not verify, reported


class EventStore(Following):
    """Appends and loads agents' logs. One per process; cheap to share between tasks."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext | None = None,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        mac_key: bytes | None = None,
    ) -> None:
        # signs appends (Fleet-Mac) and verifies reads when set: the control plane only
        super().__init__(nc, js, mac_key=mac_key)
        self.snapshot_every = snapshot_every
        self._kv: KeyValue | None = None

    # -- writing --------------------------------------------------------------------------

    async def append(
        self,
        agent_id: str,
        events: Sequence[AgentEvent],
        expected: Position,
        *,
        _passes: int = FOREIGN_PASSES,
    ) -> Position:
        """Append `events` after `expected`; raise `ConcurrentUpdate` if the log moved on.

        A retried append (same event ids, e.g. after a lost acknowledgement) is recognised and
        stored once: the server checks the expected sequence before the Nats-Msg-Id dedupe,
        so a refusal is answered by reading what follows `expected` and comparing event ids.
        With the fleet key, a refusal caused only by messages this store did not sign (a
        forgery) is not a conflict: they are refused and the append goes on after them.
        """
        subject = subjects.events(agent_id)
        position = expected
        for i, event in enumerate(events):
            raw = _encode(replace(event, prev_hash=position.hash))
            try:
                seq = await self._publish(agent_id, subject, raw, event.event_id, position.seq)
            except ConcurrentUpdate:
                stored = await self._already_stored(agent_id, events[i:], position)
                if stored is not None:
                    return await self.append(agent_id, events[i + len(stored) :], stored[-1])
                past = await self._past_foreign(agent_id, position) if _passes else None
                if past is None:
                    raise
                return await self.append(agent_id, events[i:], past, _passes=_passes - 1)
            position = Position(seq, event_hash(raw))
        return position

    async def _past_foreign(self, agent_id: str, after: Position) -> Position | None:
        """Where to append when only messages this store did not sign follow `after` (a
        forgery stored with the control plane's credential): each is refused, as every
        reader refuses it, and the next append expects the last of them while its event
        still names `after`'s hash. None when an event that verifies follows (a real
        concurrent writer: the caller must reload), or without the fleet key."""
        if self.macs is None:
            return None
        check = ChainCheck(agent_id, self.macs, after.hash if after.seq else None)
        foreign: list[Refusal] = []
        genuine = False

        def on_row(seq: int, raw: bytes, mac: str) -> None:
            nonlocal genuine
            problem = check.check(seq, raw, mac)
            if problem is None:
                genuine = True
            else:
                foreign.append(check.refusal(seq, problem))

        await self.scan_signed(agent_id, on_row, after=after.seq)
        if genuine or not foreign:
            return None
        for refusal in foreign:
            report_refused(refusal, "append")
        return Position(foreign[-1].seq, after.hash)

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
        for (seq, raw, mac), event in zip(rows, events, strict=False):
            stored = decode(seq, raw).event
            if stored is None or stored.event_id != event.event_id:
                break
            if self.macs is not None and not hmac.compare_digest(mac, self.macs.mac(raw)):
                break  # a copy of our event id that we did not sign is not ours
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
        raw = _encode(Snapshot(state=state, position=position))
        if self.mac_key is None:
            await (await self._snapshots()).put(state.agent_id, raw)
            return
        # kv.put with a header: the same publish nats-py's put makes, plus the MAC
        subject = f"$KV.{subjects.SNAPSHOTS_BUCKET}.{subjects.token(state.agent_id)}"
        await self.js.publish(subject, raw, headers={MAC_HEADER: event_mac(self.mac_key, raw)})

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
        # With the key, an event that does not verify is not folded; the position then names
        # the last stored sequence (what the next append must expect) with the hash of the
        # last event that passed (what the actor's next event names as its prev_hash).
        check = None
        if self.macs is not None:
            check = ChainCheck(agent_id, self.macs, position.hash if position.seq else None)

        def on_row(seq: int, raw: bytes, mac: str) -> None:
            nonlocal state, last
            last = (seq, raw)
            if check is not None:
                problem = check.check(seq, raw, mac)
                if problem is not None:
                    loaded.refused.append(report_refused(check.refusal(seq, problem), "load"))
                    return
            try:
                state = evolve(state, event_decoder.decode(raw))
            except msgspec.DecodeError:
                loaded.skipped.append(decode(seq, raw))

        await self.scan_signed(agent_id, on_row, after=position.seq, upto=upto)
        loaded.state = state
        if last is not None:
            if check is None:
                loaded.position = Position(last[0], event_hash(last[1]))
            else:
                loaded.position = Position(last[0], check.last_hash or GENESIS)
        return loaded

    async def read_snapshot(self, agent_id: str) -> Snapshot | None:
        """The agent's snapshot; with the key, only one its actor signed (else None, and the
        log is replayed from its start)."""
        if self.macs is None:
            try:
                entry = await (await self._snapshots()).get(subjects.token(agent_id))
            except KeyNotFoundError:
                return None
            raw = entry.value or b""
        else:
            found = await self._signed_snapshot(agent_id)
            if found is None:
                return None
            raw = found
        try:
            snapshot = _snapshot_decoder.decode(raw)
        except msgspec.DecodeError as e:
            log.warning("snapshot of agent %s ignored (a full replay follows): %s", agent_id, e)
            return None
        if self.macs is not None and snapshot.state.agent_id != agent_id:
            log.warning(
                "snapshot of agent %s ignored: it is agent %s's", agent_id, snapshot.state.agent_id
            )
            return None
        return snapshot if snapshot.version == SNAPSHOT_VERSION else None

    async def _signed_snapshot(self, agent_id: str) -> bytes | None:
        """The snapshot entry's value if its Fleet-Mac verifies; a refusal is logged."""
        assert self.macs is not None
        bucket = subjects.SNAPSHOTS_BUCKET
        subject = f"$KV.{bucket}.{subjects.token(agent_id)}"
        try:
            msg = await self.js.get_last_msg(f"KV_{bucket}", subject)
        except NotFoundError:
            return None
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None
        raw = msg.data or b""
        mac = headers.get(MAC_HEADER, "")
        if not mac or not hmac.compare_digest(mac, self.macs.mac(raw)):
            why = "it has no Fleet-Mac" if not mac else "its Fleet-Mac is wrong"
            log.warning(
                "snapshot of agent %s (stream sequence %s) refused: %s, so its actor did not"
                " write it; the log is replayed from its start",
                agent_id,
                msg.seq,
                why,
            )
            return None
        return raw

    async def chain_start(self, agent_id: str, upto: int) -> tuple[int, str | None]:
        """From the agent's signed snapshot when it is at or before `upto`."""
        snapshot = await self.read_snapshot(agent_id)
        if snapshot is None or snapshot.position.seq > upto:
            return 0, None
        return snapshot.position.seq, snapshot.position.hash

    # -- plumbing ---------------------------------------------------------------------------

    async def _snapshots(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.SNAPSHOTS_BUCKET)
        return self._kv

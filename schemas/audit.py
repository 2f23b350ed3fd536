"""The audit of an agent's log, as pure logic: feed it the stored rows, read its findings.

Per event it checks, in this order: the stream sequence increases; the bytes decode; the
event's `prev_hash` is the hash of the previous stored bytes (the first event names none);
its `agent_id` is its subject's agent; its `Fleet-Mac` (when the fleet key is known) is the
HMAC of its bytes, i.e. the agent's own actor appended it; and a lifecycle or activity
change starts where the fold stands and is a step of the table in schemas/states.py. Then it
folds the event with `evolve`, exactly as a load does. At the end, the number of events read
and the last sequence are compared with what the stream says the subject holds.

Kept tiny per event (a msgspec decode, one BLAKE2b, two table lookups, HMAC only when a key
is given): an audit reads a whole log at the speed of the stream.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import msgspec

from schemas import events as e
from schemas.agent import AgentState, evolve, initial
from schemas.chain import GENESIS
from schemas.states import ACTIVITY, LIFECYCLE, Lifecycle

MAC_HEADER = "Fleet-Mac"  # HMAC-SHA256 (hex) of the stored payload with the fleet key
_BLOCK = 64  # SHA-256's block size, for HMAC's key padding

_decode = msgspec.json.Decoder(e.AgentEvent).decode
_blake2b = hashlib.blake2b
_LifecycleChanged, _ActivityChanged, _AgentCreated = (
    e.LifecycleChanged,
    e.ActivityChanged,
    e.AgentCreated,
)
_NEW = Lifecycle.NEW


def event_mac(key: bytes, raw: bytes) -> str:
    """The `Fleet-Mac` of one payload."""
    return hmac.digest(key, raw, "sha256").hex()


class MacKey:
    """`event_mac` for many payloads with one key: HMAC (RFC 2104) from SHA-256 states that
    have already absorbed the padded key, copied per payload. About 4x quicker than
    `hmac.digest`, which sets the key up again for every call."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(self, raw: bytes) -> str:
        inner = self._inner.copy()
        inner.update(raw)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class Violation(msgspec.Struct, frozen=True):
    """One thing wrong with a log: where (agent, stream sequence) and what, as a sentence."""

    agent_id: str
    seq: int
    problem: str

    def sentence(self) -> str:
        return f"agent {self.agent_id}, sequence {self.seq}: {self.problem}"


class AgentAudit:
    """Audits one agent's log fed row by row (`feed`), then `finish`.

    `at_seq` / `at_time` choose the moment `state_at` shows; `keep` keeps the decoded events
    (for a timeline or an export), which a plain `--verify` does not need.
    """

    def __init__(
        self,
        agent_id: str,
        key: bytes | None = None,
        *,
        at_seq: int | None = None,
        at_time: datetime | None = None,
        keep: bool = False,
    ) -> None:
        self.agent_id = agent_id
        self.key = key
        self._mac = MacKey(key) if key is not None else None
        self.at_seq, self.at_time = at_seq, at_time
        self.keep = keep
        self.state: AgentState = initial(agent_id)
        self.state_at: AgentState = self.state
        self.violations: list[Violation] = []
        self.rows: list[tuple[int, e.AgentEvent]] = []
        self.count = 0
        self.last_seq = 0
        self._prev = GENESIS

    def _bad(self, seq: int, problem: str) -> None:
        self.violations.append(Violation(self.agent_id, seq, problem))

    def feed(self, seq: int, raw: bytes, mac: str = "") -> None:
        """Check and fold one stored event (its stream sequence, bytes and Fleet-Mac)."""
        if seq <= self.last_seq:
            self._bad(seq, f"the stream sequence does not increase (after {self.last_seq})")
        digest = _blake2b(raw, digest_size=16).hexdigest()
        prev, self._prev = self._prev, digest
        first = self.count == 0
        self.count += 1
        self.last_seq = seq
        try:
            ev = _decode(raw)
        except msgspec.DecodeError as err:
            self._bad(seq, f"the event cannot be read: {err}")
            return
        if ev.prev_hash != prev:
            self._bad(seq, _chain_problem(ev.prev_hash, prev, first))
        if ev.agent_id != self.agent_id:
            self._bad(seq, f"the event names agent {ev.agent_id!r} but is in {self.agent_id}'s log")
        if self._mac is not None:
            if not mac:
                self._bad(seq, "no Fleet-Mac: the agent's actor did not append it (forged?)")
            elif not hmac.compare_digest(mac, self._mac.mac(raw)):
                self._bad(seq, "the Fleet-Mac is wrong: forged, or altered after it was signed")
        self._transition(seq, ev)
        self.state = state = evolve(self.state, ev)
        if (self.at_seq is None or seq <= self.at_seq) and (
            self.at_time is None or ev.at <= self.at_time
        ):
            self.state_at = state
        if self.keep:
            self.rows.append((seq, ev))

    def _transition(self, seq: int, ev: e.AgentEvent) -> None:
        s = self.state
        kind = type(ev)
        if kind is _LifecycleChanged:
            assert isinstance(ev, e.LifecycleChanged)
            if ev.frm is not s.lifecycle:
                self._bad(seq, f"lifecycle changes from {ev.frm} but the agent was {s.lifecycle}")
            if ev.to not in LIFECYCLE[s.lifecycle]:
                self._bad(seq, f"lifecycle {s.lifecycle} -> {ev.to} is not in the table")
        elif kind is _ActivityChanged:
            assert isinstance(ev, e.ActivityChanged)
            if ev.frm is not s.activity:
                self._bad(seq, f"activity changes from {ev.frm} but the agent was {s.activity}")
            if ev.to not in ACTIVITY[s.activity]:
                self._bad(seq, f"activity {s.activity} -> {ev.to} is not in the table")
        elif kind is _AgentCreated:
            if s.lifecycle is not _NEW:
                self._bad(seq, "agent.created for an agent that already exists")
        elif s.lifecycle is _NEW:
            tag = kind.__struct_config__.tag
            self._bad(seq, f"{tag} before agent.created")

    def finish(self, stream_count: int | None = None, stream_last: int | None = None) -> None:
        """Compare what was read with what the stream says the subject holds."""
        if stream_count is not None and stream_count != self.count:
            self._bad(
                self.last_seq,
                f"the stream holds {stream_count} events for this agent but {self.count} were read",
            )
        if stream_last is not None and stream_last != self.last_seq:
            self._bad(
                self.last_seq,
                f"the log should end at sequence {stream_last}, the read ended at {self.last_seq}",
            )

    @property
    def ok(self) -> bool:
        return not self.violations


def _chain_problem(named: str, expected: str, first: bool) -> str:
    if first:
        return (
            f"the first event read names prev_hash {named[:12]!r}: the log does not start at "
            "the agent's first event (purged, or an event before it is missing)"
        )
    if not named:
        return "prev_hash is empty but this is not the agent's first event (inserted?)"
    return (
        f"prev_hash {named[:12]} is not the hash of the previous stored event ({expected[:12]}): "
        "this event or the one before it was altered, dropped or slipped in"
    )


def audit_events(
    agent_id: str, rows: list[tuple[int, bytes, str]], key: bytes | None = None
) -> AgentAudit:
    """Audit rows already in memory (tests, small logs)."""
    audit = AgentAudit(agent_id, key, keep=True)
    for seq, raw, mac in rows:
        audit.feed(seq, raw, mac)
    audit.finish()
    return audit


def last_healthy_checkpoint(state: AgentState) -> int | None:
    """The last checkpoint taken while every service was healthy (None if there is none).

    For the recovery ladder's `rollback` rung: rolling back to it returns the worktree to a
    moment the agent's services were known to work. Checkpoints recorded by snapshots older
    than the `healthy` field count as unknown, not healthy.
    """
    for cp in reversed(state.checkpoints):
        if cp.healthy is True:
            return cp.checkpoint
    return None


# What a rollback restores in the state: the agent's configuration as of the checkpoint. The
# rest (lifecycle, session, ports, running services, users, the list of checkpoints) describes
# the live world and the history, which a rollback does not rewind.
RESTORED_FIELDS = (
    "template",
    "template_version",
    "template_spec",
    "command",
    "capabilities",
    "options",
    "repo",
    "base_ref",
    "branch",
)


def restored_view(state: AgentState) -> dict[str, object]:
    """The part of a state that a rollback brings back to the checkpoint's."""
    return {name: getattr(state, name) for name in RESTORED_FIELDS}

"""The hash chain over one agent's log, and the snapshot record.

Each event names the hash of the previous event's stored bytes (`prev_hash`), so an audit can
tell that no event was altered, dropped or slipped in. The hash is over the bytes as stored,
never over a re-encoding, because a re-encoding with a newer schema would differ.
"""

from __future__ import annotations

import hashlib

import msgspec

from schemas.agent import AgentState

GENESIS = ""  # prev_hash of an agent's first event
SNAPSHOT_VERSION = 1  # bump when AgentState changes incompatibly; older snapshots are ignored


def event_hash(raw: bytes) -> str:
    """Hash of one stored event (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class Position(msgspec.Struct, frozen=True):
    """Where an agent's log ends: the stream sequence of its last event and that event's hash.

    `seq == 0` means the agent has no events; appends name it as the expected last sequence.
    """

    seq: int = 0
    hash: str = GENESIS


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's folded state as of `position`, kept in KV so a load reads only the tail."""

    state: AgentState
    position: Position
    version: int = SNAPSHOT_VERSION

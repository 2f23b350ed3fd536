"""Whether a stored event may be acted on: its Fleet-Mac and its place in the agent's chain.

Only an agent's actor holds the fleet key, so a valid `Fleet-Mac` (HMAC of the stored bytes)
says the actor wrote the event; its `prev_hash` naming the hash of the last event that passed
says it is the next one, not an old signed event stored again or one slipped in between.
Readers that act on events (the actor's reload, the fleet view, notifications, health, the
gateway, the live CLI views) check each event with `ChainCheck` and refuse one that fails.

The chain runs over the events that passed, not over every stored message: after a refused
forgery the actor's next event names the last genuine event, and a reader that refused the
forgery finds exactly that. (The audit, schemas/audit.py, reports both the forgery and the
break it leaves in the stored sequence.) Pure: no I/O.
"""

from __future__ import annotations

import hmac

import msgspec

from schemas.audit import MacKey
from schemas.chain import event_hash


class Refusal(msgspec.Struct, frozen=True):
    """An event a reader would not act on: whose, where (stream sequence) and why."""

    agent_id: str
    seq: int
    problem: str

    def sentence(self) -> str:
        return f"agent {self.agent_id}'s event at sequence {self.seq} was refused: {self.problem}"


class _Link(msgspec.Struct):
    """The two fields of any event that the check reads (others are ignored)."""

    agent_id: str = ""
    prev_hash: str = ""


_link = msgspec.json.Decoder(_Link).decode


class ChainCheck:
    """Checks one agent's stored events in stream order.

    `anchor` is the hash of the last event that passed before the first one fed (GENESIS,
    "", for an agent's first event); None when nothing before it is stored (a log whose start
    was purged): then the first event that has a valid Fleet-Mac sets the chain.
    """

    __slots__ = ("_mac", "agent_id", "last_hash", "last_seq")

    def __init__(self, agent_id: str, key: MacKey, anchor: str | None) -> None:
        self.agent_id = agent_id
        self._mac = key
        self.last_hash = anchor
        self.last_seq = 0

    def check(self, seq: int, raw: bytes, mac: str) -> str | None:
        """None if the event passes (the chain moves on to it), else why it is refused."""
        if seq <= self.last_seq:  # delivered again (a redelivery): passed once, so its MAC
            return None if self.signed(raw, mac) else _MAC_PROBLEM[bool(mac)]
        if not self.signed(raw, mac):
            return _MAC_PROBLEM[bool(mac)]
        try:
            link = _link(raw)
        except msgspec.DecodeError:
            link = None  # signed but not an object we read: a newer writer's; it still links
        if link is not None:
            if link.agent_id and link.agent_id != self.agent_id:
                return f"it names agent {link.agent_id!r} but is in {self.agent_id}'s log"
            if self.last_hash is not None and link.prev_hash != self.last_hash:
                return (
                    f"its prev_hash {link.prev_hash[:12]!r} is not the hash of the agent's last"
                    f" verified event ({self.last_hash[:12]!r}): an old event stored again,"
                    " or one slipped in"
                )
        self.last_hash = event_hash(raw)
        self.last_seq = seq
        return None

    def signed(self, raw: bytes, mac: str) -> bool:
        return bool(mac) and hmac.compare_digest(mac, self._mac.mac(raw))

    def refusal(self, seq: int, problem: str) -> Refusal:
        return Refusal(self.agent_id, seq, problem)


_MAC_PROBLEM = {
    False: "it has no Fleet-Mac, so the agent's actor did not append it (forged?)",
    True: "its Fleet-Mac is wrong: not signed with the fleet key, or altered since",
}

"""Commands an agent has already applied, by id: a retried command is answered, not redone.

A client whose command timed out (the actor's worker died before it replied, or NATS was
restarting) retries with the same `id`. Every event a command leads to carries that id as
`causation`, so the log says which ids were applied: the actor keeps the last `WINDOW` of
them, loaded from its log's tail when it (re)starts, and answers a known id with the agent's
state instead of acting again. A command whose events were stored but whose side effect was
cut short by the crash (text not yet typed into the pane) is therefore not repeated: the
log is the truth, and at-most-once is the safe side for input to an assistant.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from infra.eventscan import SHORT_TAIL
from infra.eventstore import EventStore
from schemas.events import AgentEvent

WINDOW = 1_000  # command ids remembered; a retry comes seconds later, not thousands of commands


class Applied:
    """The ids of the most recent commands with recorded events, oldest dropped first."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, events: Iterable[AgentEvent]) -> None:
        for event in events:
            if event.causation:
                self._ids[event.causation] = None
                self._ids.move_to_end(event.causation)
        while len(self._ids) > self.window:
            self._ids.popitem(last=False)

    def __contains__(self, command_id: object) -> bool:
        return bool(command_id) and command_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


async def load_applied(store: EventStore, agent_id: str, last_seq: int) -> Applied:
    """The command ids of the log's last events (one direct-get batch, well under a ms)."""
    applied = Applied()
    stored = await store.read(agent_id, after=max(0, last_seq - SHORT_TAIL), upto=last_seq)
    applied.add(s.event for s in stored if s.event is not None)
    return applied

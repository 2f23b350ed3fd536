"""The Ray names of the fleet's actors, in the fleet's Ray namespace (`AgentConfig.namespace`).

Both sides need them: the supervisor names and finds the actors, and an agent's actor finds
the supervisor to say that it was removed.
"""

from __future__ import annotations

SUPERVISOR = "fleet:supervisor"
AGENT_PREFIX = "fleet:agent:"  # + agent id: an agent's own actor (a cold spawn)
SLOT_PREFIX = "fleet:slot:"  # + slot: a warm pool actor, bound to an agent at its spawn

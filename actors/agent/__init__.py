"""The agent actor and its helpers.

`AgentActor` (actor.py) is the Ray actor, one per agent, the single writer of its log; it
answers NATS and hands each command to the dispatcher (dispatch.py), which calls the steps
(steps.py) and the helpers beside them. Every helper takes one `AgentContext` (context.py):
what the agent's parts share, never the actor itself. The modules form a DAG, bottom up:
ids, config, steplock, dedupe, envelope; context; creds, assistantconfig, confine, portlease,
session, keyboard, quitting; checkpoints, devservices, monitor, hookcalls, limitwatch,
watchers; recovery, rollback; steps; dispatch; actor.
"""

from actors.agent.actor import AgentActor
from actors.agent.config import AgentConfig
from actors.agent.context import AgentContext

__all__ = ["AgentActor", "AgentConfig", "AgentContext"]

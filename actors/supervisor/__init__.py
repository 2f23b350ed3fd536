"""The supervisor actor and its helpers: spawning, the warm pool, the fleet's list, mail.

`Supervisor` (actor.py) spawns and finds agents' actors; `start` (launch.py) makes its one
detached Ray actor; placement.py turns a template's resources into Ray options, fleetview.py
folds the fleet's list from the log, mailrelay.py checks what agents send each other, and
templatelookup.py asks the templates service which template a spawn runs.
"""

from actors.names import AGENT_PREFIX, SLOT_PREFIX, SUPERVISOR
from actors.supervisor.actor import Supervisor
from actors.supervisor.config import FleetConfig, agent_actor_class, agent_options
from actors.supervisor.launch import start

__all__ = [
    "AGENT_PREFIX",
    "SLOT_PREFIX",
    "SUPERVISOR",
    "FleetConfig",
    "Supervisor",
    "agent_actor_class",
    "agent_options",
    "start",
]

"""What every agent actor needs to know about the fleet; given to its constructor."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.discovery import HEARTBEAT_S


@dataclass(frozen=True)
class AgentConfig:
    """What every agent actor needs to know about the fleet; passed to its constructor."""

    nats_url: str
    state_dir: str
    worktree_root: str
    tmux_socket: str = "fleetd"
    namespace: str = "fleetd"  # Ray namespace of the fleet's named actors
    polite_timeout_s: float = 5.0
    term_timeout_s: float = 3.0
    monitor_period_s: float = 0.5
    checkpoint_every_min: float = 0.0  # automatic checkpoint per N minutes of WORKING; 0: off
    mac_key: bytes | None = None  # the fleet key: signs this agent's appends (infra/fleetkey.py)
    # `fleet up` configures the NATS server: each agent gets its own user (actors/agent/creds.py).
    nats_auth: bool = False
    # The shell of the services and monitor windows. Without rc files: a user's .bashrc can
    # take seconds (or hang on a lock) and a fleet starts many of these at once.
    window_shell: str = "bash --noprofile --norc -i"
    # Per-sender limit on fleet.cmd.<id> (a sender is one NATS connection): a burst, then a rate.
    cmd_rate: float = 200.0
    cmd_burst: float = 400.0
    heartbeat_s: float = HEARTBEAT_S  # how often the agent's registry entry is refreshed
    # Landlock the panes to the template's paths (actors/agent/confine.py).
    confine_paths: bool = True
    # Bubblewrap namespaces for the panes, and (fleetd as root) a uid of each agent's own.
    confine_namespaces: bool = True
    confine_user: bool = True

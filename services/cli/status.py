"""`fleet status`: where the running fleetd listens, read from its state file (no NATS)."""

from __future__ import annotations

import argparse

import msgspec

from infra.config import FleetState, Settings, format_state, pid_alive, read_state


def cmd_status(args: argparse.Namespace) -> int:
    """Say where the running fleetd listens, or that it is not up (exit status 2)."""
    state = read_state(Settings.from_env())
    nats_alive = pid_alive(state.nats_pid) if state.nats_pid else None
    if args.json:
        print(msgspec.json.encode({**_as_dict(state), "nats_alive": nats_alive}).decode())
    else:
        print(format_state(state, as_json=False))
        if nats_alive is False:
            print(f"  warning: nats-server pid {state.nats_pid} is not running (restarting?)")
    return 0


def _as_dict(state: FleetState) -> dict[str, object]:
    found: dict[str, object] = msgspec.to_builtins(state)
    return found

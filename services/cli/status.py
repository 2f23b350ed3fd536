"""`fleet up` and `fleet status`: start fleetd here, or say where the running one listens."""

from __future__ import annotations

import argparse
import sys

import msgspec

from infra.config import FleetState, Settings, format_state, pid_alive, read_state
from services import up


def cmd_up(args: argparse.Namespace) -> int:
    """Start fleetd in the foreground (or in the background with --detach)."""
    settings = Settings.from_env()
    if args.detach:
        up.detach(settings, sys.stdout, args.json)
    else:
        up.run(settings, sys.stdout, args.json)
    return 0


def up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detach", action="store_true", help="run in the background; return once it is ready"
    )


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
    return msgspec.to_builtins(state)

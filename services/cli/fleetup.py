"""`fleet up`: start fleetd here, in the foreground or (`--detach`) in the background.

Its own module, since services/up.py composes every actor and service (Ray included): only
`fleet up` imports it, never `fleet status` or a completion of another verb.
"""

from __future__ import annotations

import argparse
import sys

from infra.config import Settings
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

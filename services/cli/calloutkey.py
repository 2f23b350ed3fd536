"""`fleet callout-key FILE`: the issuer key for the auth callout of a NATS you run.

The seed (private) goes to FILE, mode 0600, and is never printed; fleetd reads it through
`FLEET_NATS_CALLOUT_SEED_FILE`. The public key is what nats-server's config names as the
callout's `issuer`. Run again on an existing FILE, it only shows that file's public key.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import msgspec

from infra import natscallout


def callout_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="where the seed goes (made 0600; kept if there)")


def cmd_callout_key(args: argparse.Namespace) -> int:
    """Make (or show) the issuer key of a NATS auth callout for agents' users."""
    path: Path = args.file.expanduser()
    made = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile: show that one
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(natscallout.new_seed() + "\n")
            made = True
    issuer = natscallout.public_key(natscallout.load_issuer(path))
    if args.json:
        print(
            msgspec.json.encode({"seed_file": str(path), "issuer": issuer, "made": made}).decode()
        )
        return 0
    print(f"{'made' if made else 'kept'} {path} (the seed: keep it private)")
    print(f"issuer {issuer}")
    print("In nats-server's config (see infra/deploy/README.md):")
    print(f"  authorization {{ auth_callout {{ issuer: {issuer}, account: FLEET,")
    print("                                 auth_users: [fleet, sys] } }")
    print(f"and for fleetd: FLEET_NATS_CALLOUT_SEED_FILE={path}")
    return 0

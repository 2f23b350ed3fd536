"""`fleet token create|ls|revoke`: gateway tokens, written straight to the state dir.

No running fleetd is needed: each change is made under the store's lock (services/tokens.py),
and a running gateway notices it within a moment: a revoked token is refused from then on and
its open WebSockets are closed. The token is printed once; only its sha256 digest is kept.
"""

from __future__ import annotations

import argparse

import msgspec

from infra.config import Settings
from schemas.errors import FleetError
from services.tokens import ROLES, TokenStore


def token_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="make a token (printed once)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="", help="a name to list and revoke it by")
    create.add_argument("--json", action="store_true", help="print JSON for programs")
    listing = sub.add_parser("ls", help="list tokens (names and roles; never the tokens)")
    listing.add_argument("--json", action="store_true", help="print JSON for programs")
    revoke = sub.add_parser("revoke", help="remove every token with this name")
    revoke.add_argument("name")
    revoke.add_argument("--json", action="store_true", help="print JSON for programs")


def cmd_token(args: argparse.Namespace) -> int:
    """Create, list or revoke gateway tokens (roles: viewer, operator, admin)."""
    store = TokenStore(Settings.from_env().state_dir)
    try:
        return _token(store, args)
    finally:
        store.close()


def _token(store: TokenStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        token = store.create(args.role, args.name)
        shown = {"token": token, "role": args.role, "name": args.name or args.role}
        print(msgspec.json.encode(shown).decode() if args.json else token)
    elif args.action == "ls":
        entries = [msgspec.to_builtins(e) for e in store.entries().values()]
        if args.json:
            print(msgspec.json.encode(entries).decode())
        for entry in [] if args.json else entries:
            print(f"{entry['name']}  {entry['role']}  {entry.get('created_at', '')}")
    else:
        removed = store.revoke(args.name)
        if not removed:
            raise FleetError(f"there is no token named {args.name!r} (fleet token ls lists them)")
        print(
            msgspec.json.encode({"revoked": removed}).decode()
            if args.json
            else f"revoked {removed} token(s) named {args.name}; a running gateway closes "
            "their WebSockets"
        )
    return 0

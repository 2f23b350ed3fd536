"""Gateway tokens: a role each (viewer < operator < admin), kept only as sha256 digests at rest.

`<state_dir>/tokens.json` (mode 0600) maps a digest to its role and name; the token itself is
shown once, when it is made. `fleet up` makes an admin token for the CLI in
`<state_dir>/admin.token` (mode 0600). The gateway re-reads the file when its mtime changes,
so `fleet token create` works without talking to a running gateway.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from datetime import datetime
from pathlib import Path

import msgspec

from infra.config import now_utc
from schemas.errors import FleetError

ROLES = ("viewer", "operator", "admin")
TOKENS_FILE = "tokens.json"
ADMIN_TOKEN_FILE = "admin.token"
TOKEN_PREFIX = "fleet_"


class TokenEntry(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    name: str = ""
    created_at: datetime | None = None


class InvalidRole(FleetError):
    code = "invalid_role"

    def __init__(self, role: str) -> None:
        self.role = role
        super().__init__(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    """True when `role` is at least `needed` in viewer < operator < admin."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class TokenStore:
    """The digests in `<state_dir>/tokens.json`, re-read when the file changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TOKENS_FILE
        self._mtime: float | None = None
        self._entries: dict[str, TokenEntry] = {}

    def entries(self) -> dict[str, TokenEntry]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._mtime, self._entries = None, {}
            return {}
        if mtime != self._mtime:
            raw = self.path.read_bytes()
            try:
                self._entries = msgspec.json.decode(raw, type=dict[str, TokenEntry])
            except msgspec.DecodeError as e:
                raise FleetError(f"the token file {self.path} cannot be read: {e}") from e
            self._mtime = mtime
        return self._entries

    def check(self, token: str) -> TokenEntry | None:
        """The entry of `token`, or None; digests are compared in constant time."""
        wanted = digest(token)
        for known, entry in self.entries().items():
            if hmac.compare_digest(known, wanted):
                return entry
        return None

    def create(self, role: str, name: str = "") -> str:
        """Make a new token with `role`; returns the token (only its digest is stored)."""
        if role not in ROLES:
            raise InvalidRole(role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entries = dict(self.entries())
        entries[digest(token)] = TokenEntry(role=role, name=name or role, created_at=now_utc())
        _write_private(self.path, msgspec.json.format(msgspec.json.encode(entries)) + b"\n")
        self._mtime = None
        return token

    def revoke(self, name: str) -> int:
        """Remove every token named `name`; returns how many."""
        entries = self.entries()
        kept = {k: v for k, v in entries.items() if v.name != name}
        if len(kept) != len(entries):
            _write_private(self.path, msgspec.json.format(msgspec.json.encode(kept)) + b"\n")
            self._mtime = None
        return len(entries) - len(kept)


def ensure_admin_token(state_dir: Path) -> str:
    """The CLI's admin token from `<state_dir>/admin.token`, made (and registered) if missing."""
    store = TokenStore(state_dir)
    path = state_dir / ADMIN_TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token and store.check(token) is not None:
            return token
    token = store.create("admin", "fleet-cli")
    _write_private(path, token.encode() + b"\n")
    return token


def read_admin_token(state_dir: Path) -> str | None:
    try:
        return (state_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None

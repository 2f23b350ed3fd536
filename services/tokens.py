"""Gateway tokens: a role each (viewer < operator < admin), kept only as sha256 digests at rest.

`<state_dir>/tokens.json` (mode 0600) maps a digest to its role and name; the token itself is
shown once, when it is made. `fleet up` makes an admin token for the CLI in
`<state_dir>/admin.token` (mode 0600).

Writers (`fleet token create|revoke` in any process, the gateway's POST /api/tokens) change the
file under an exclusive `flock` of `tokens.json.lock`: read the file as it is now, change it,
write a new file and rename it over the old one. So no update is lost to another writer, and
a reader (which takes no lock) sees the old file or the new one, never half of one.

Readers keep the decoded file and read it again when the path names another file (a rename
gives it a new inode) or the file changed in place (size, mtime). The file read last is kept
open, so its inode number cannot be given to a newer file while it is the one remembered: a
change is never mistaken for the same file. The gateway asks several times a second and
closes the WebSockets of tokens that are gone (services/gateway/tickets.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import weakref
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import msgspec

from infra.config import now_utc
from schemas import validation
from schemas.errors import FleetError

ROLES = ("viewer", "operator", "admin")
TOKENS_FILE = "tokens.json"
LOCK_FILE = "tokens.json.lock"
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


class UnreadableTokens(FleetError):
    code = "unreadable_tokens"

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"the token file {path} cannot be read: {problem}")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    """True when `role` is at least `needed` in viewer < operator < admin."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _decode(path: Path, raw: bytes) -> dict[str, TokenEntry]:
    try:
        return msgspec.json.decode(raw, type=dict[str, TokenEntry]) if raw.strip() else {}
    except msgspec.DecodeError as e:
        raise UnreadableTokens(path, str(e)) from e


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class _Held:
    """The file read last: its open descriptor (which pins its inode) and its stat key."""

    def __init__(self, fd: int, key: tuple[int, int, int, int]) -> None:
        self.fd, self.key = fd, key
        self._finalizer = weakref.finalize(self, _close_quietly, fd)

    def close(self) -> None:
        self._finalizer()


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TokenStore:
    """The digests in `<state_dir>/tokens.json`, re-read when the file changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TOKENS_FILE
        self.lock_path = state_dir / LOCK_FILE
        self._held: _Held | None = None
        self._entries: dict[str, TokenEntry] = {}

    def entries(self) -> dict[str, TokenEntry]:
        """The tokens as the file holds them now (read again only when it changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._forget()
            return {}
        if self._held is not None and self._held.key == _key(st):
            return self._entries
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._forget()
            return {}
        held = _Held(fd, _key(os.fstat(fd)))
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                entries = _decode(self.path, f.read())
        except BaseException:
            held.close()
            raise
        self._forget()
        self._held, self._entries = held, entries
        return entries

    def _forget(self) -> None:
        if self._held is not None:
            self._held.close()
        self._held, self._entries = None, {}

    def close(self) -> None:
        """Let go of the file read last (a store that is used again reopens it)."""
        self._forget()

    def check(self, token: str) -> TokenEntry | None:
        """The entry of `token`, or None; digests are compared in constant time."""
        wanted = digest(token)
        found = None
        for known, entry in self.entries().items():
            if hmac.compare_digest(known, wanted):
                found = entry
        return found

    def by_digest(self, known: str) -> TokenEntry | None:
        """The entry of a digest the gateway already holds (a ticket's, a socket's), or None."""
        return self.entries().get(known)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, TokenEntry]]:
        """The file's entries under the lock, written back (atomically) when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when `lock` is closed
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                raw = b""
            entries = _decode(self.path, raw)
            before = dict(entries)
            yield entries
            if entries != before:
                _write_private(self.path, msgspec.json.format(msgspec.json.encode(entries)) + b"\n")
        finally:
            os.close(lock)

    def create(self, role: str, name: str = "") -> str:
        """Make a new token with `role`; returns the token (only its digest is stored)."""
        if role not in ROLES:
            raise InvalidRole(role)
        if name:  # it is the `by` of each request the token sends: one id, as an agent's name
            validation.name(name, "token name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._changing() as entries:
            entries[digest(token)] = TokenEntry(role=role, name=name or role, created_at=now_utc())
        return token

    def revoke(self, name: str) -> int:
        """Remove every token named `name`; returns how many."""
        with self._changing() as entries:
            gone = [known for known, entry in entries.items() if entry.name == name]
            for known in gone:
                del entries[known]
        return len(gone)


def ensure_admin_token(state_dir: Path) -> str:
    """The CLI's admin token from `<state_dir>/admin.token`, made (and registered) if missing."""
    store = TokenStore(state_dir)
    path = state_dir / ADMIN_TOKEN_FILE
    try:
        with contextlib.suppress(FileNotFoundError):
            token = path.read_text().strip()
            if token and store.check(token) is not None:
                return token
        token = store.create("admin", "fleet-cli")
        _write_private(path, token.encode() + b"\n")
        return token
    finally:
        store.close()


def read_admin_token(state_dir: Path) -> str | None:
    try:
        return (state_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None

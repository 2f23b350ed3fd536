"""The fleet key: the secret that lets an audit tell the agents' own appends from anyone else's.

A forger who can publish on `fleet.evt.<id>` can also compute `prev_hash` (it only hashes what
is stored), so the hash chain alone cannot prove who wrote an event. Each agent actor therefore
signs what it appends (header `Fleet-Mac`, HMAC-SHA256 of the payload with this key). The key
is made once, by whichever process first needs it, in `<state_dir>/fleet.key` (mode 0600);
`O_EXCL` makes two processes that race agree on the first one's key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from schemas.errors import FleetError

KEY_FILE_NAME = "fleet.key"
KEY_BYTES = 32


def key_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / KEY_FILE_NAME


def load_or_create(state_dir: str | Path) -> bytes:
    """The fleet key from `<state_dir>/fleet.key`, made (0600) if there is none yet."""
    path = key_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load(state_dir)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return load(state_dir)


def load(state_dir: str | Path) -> bytes:
    """The existing fleet key; a missing or damaged file is one sentence."""
    path = key_path(state_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError as e:
        raise FleetError(f"there is no fleet key at {path} (`fleet up` makes one)") from e
    try:
        key = bytes.fromhex(text)
    except ValueError as e:
        raise FleetError(f"the fleet key at {path} is not hex; restore it from a backup") from e
    if len(key) < 16:
        raise FleetError(f"the fleet key at {path} is too short ({len(key)} bytes)")
    return key


def load_if_present(state_dir: str | Path) -> bytes | None:
    """The fleet key, or None where this state dir has none (an audit of a copied stream)."""
    return load(state_dir) if key_path(state_dir).exists() else None

"""Each agent's own user: the unprivileged uid its processes run as when fleetd runs as root.

Like systemd's DynamicUser, the uids come from a range that no account uses (by default
524288-589823, `FLEET_SANDBOX_UIDS=FIRST-LAST`), leased in the KV bucket `fleet_uids`: key
`u<uid>` holds the agent id, written with `create`, which fails when the key exists, so two
agents never share a uid even when they spawn at the same moment in different processes; then
`a.<agent>` names its uid, so its actor finds the same one after a restart (its files in the
worktree are owned by it). The probe for a free uid starts at a hash of the agent id. The lease
goes when the agent is removed.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas.errors import FleetError
from schemas.subjects import token

BUCKET = "fleet_uids"
DEFAULT_RANGE = (524288, 589823)  # 0x80000 + 64k: above distros' users and systemd's dynamic ones
PROBES = 4096  # how far from its hashed start an agent looks for a free uid


class NoFreeUid(FleetError):
    code = "no_free_uid"

    def __init__(self, agent_id: str, first: int, last: int) -> None:
        self.agent_id = agent_id
        super().__init__(
            f"cannot give agent {agent_id} a user of its own: the uids {first}-{last} near its "
            "place are all leased; remove agents or widen FLEET_SANDBOX_UIDS"
        )


class BadUidRange(FleetError):
    code = "invalid_config"

    def __init__(self, value: str) -> None:
        super().__init__(
            f"FLEET_SANDBOX_UIDS={value!r} is not a range of unused uids: write FIRST-LAST, "
            "both above 65535 (no account may use them), FIRST <= LAST"
        )


def uid_range(value: str | None = None) -> tuple[int, int]:
    """The configured range (FLEET_SANDBOX_UIDS), checked."""
    value = os.environ.get("FLEET_SANDBOX_UIDS", "") if value is None else value
    if not value.strip():
        return DEFAULT_RANGE
    first, sep, last = value.strip().partition("-")
    try:
        lo, hi = int(first), int(last)
    except ValueError:
        raise BadUidRange(value) from None
    if not sep or lo <= 65535 or hi < lo or hi >= 2**31:
        raise BadUidRange(value)
    return lo, hi


async def _bucket(nc: Client) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE)
        return await js.create_key_value(config)


def _candidates(agent_id: str, first: int, last: int) -> list[int]:
    size = last - first + 1
    start = zlib.crc32(agent_id.encode()) % size
    return [first + (start + i) % size for i in range(min(PROBES, size))]


async def lease(nc: Client, agent_id: str) -> int:
    """The agent's uid: the one it holds already, or the first free one from its place."""
    first, last = uid_range()
    kv = await _bucket(nc)
    mine = f"a.{token(agent_id)}"
    try:
        held = await kv.get(mine)
        return int((held.value or b"0").decode())
    except KeyNotFoundError:
        pass
    for uid in _candidates(agent_id, first, last):
        try:
            await kv.create(f"u{uid}", agent_id.encode())
        except KeyWrongLastSequenceError:
            continue
        await kv.put(mine, str(uid).encode())
        return uid
    raise NoFreeUid(agent_id, first, last)


async def release(nc: Client, agent_id: str) -> None:
    """Give the agent's uid back (its agent is removed)."""
    kv = await _bucket(nc)
    mine = f"a.{token(agent_id)}"
    try:
        held = await kv.get(mine)
    except KeyNotFoundError:
        return
    await kv.purge(f"u{int((held.value or b'0').decode())}")
    await kv.purge(mine)


def hand_over(uid: int, paths: list[Path]) -> None:
    """Make the agent's own folders its user's (what the control plane created as root)."""
    for top in paths:
        if not top.exists():
            continue
        os.chown(top, uid, uid, follow_symlinks=False)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)

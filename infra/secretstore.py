"""Where an agent's secrets live: KV bucket `fleet_secrets`, key = agent id, never the log.

The value is the agent's unredacted template (as JSON) and the env given at spawn. The actor
writes it once the agent is created, reads it whenever it (re)makes the session or a service,
and deletes it when the agent is removed. The bucket keeps one revision per key, file storage
like the rest of the state dir.
"""

from __future__ import annotations

import contextlib

import msgspec
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from schemas.secrets import SECRETS_BUCKET
from schemas.subjects import token


class AgentSecrets(msgspec.Struct, frozen=True, kw_only=True):
    template_spec: str = ""  # the resolved template, secret values included
    env: dict[str, str] = {}  # given at spawn (SpawnRequest.env)


async def _bucket(nc: Client) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(SECRETS_BUCKET)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=SECRETS_BUCKET, history=1, storage=StorageType.FILE)
        return await js.create_key_value(config)


async def put(nc: Client, agent_id: str, secrets: AgentSecrets) -> None:
    kv = await _bucket(nc)
    await kv.put(token(agent_id), msgspec.json.encode(secrets))


async def get(nc: Client, agent_id: str) -> AgentSecrets | None:
    kv = await _bucket(nc)
    try:
        entry = await kv.get(token(agent_id))
    except KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value or b"{}", type=AgentSecrets)


async def delete(nc: Client, agent_id: str) -> None:
    kv = await _bucket(nc)
    with contextlib.suppress(KeyNotFoundError):
        await kv.purge(token(agent_id))

"""Reading a KV bucket whole: every live key's last value, or one key's kept history.

nats-py's `kv.keys()`, `kv.history()` and a fresh watcher end their initial listing with a
None marker that can come before the entries when the consumer is created (its num_pending
read races the first delivery), so a listing could be short. Here an ephemeral pull consumer
is asked for exactly the count it reports pending, so a listing is whole: what the stream
held when the consumer was made.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

KV_OP = "KV-Operation"  # header of a delete ("DEL") or purge ("PURGE") marker
FETCH = 1000


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    value: bytes
    revision: int


async def rows(
    js: JetStreamContext, bucket: str, key: str = ">", *, history: bool = False
) -> list[Row]:
    """Live entries of `bucket` matching `key` (last per key), or every kept revision."""
    prefix = f"$KV.{bucket}."
    policy = DeliverPolicy.ALL if history else DeliverPolicy.LAST_PER_SUBJECT
    config = ConsumerConfig(
        deliver_policy=policy, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
    )
    psub = await js.pull_subscribe(prefix + key, stream=f"KV_{bucket}", config=config)
    found: list[Row] = []
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        while pending > 0:
            msgs = await psub.fetch(min(pending, FETCH), timeout=5)
            for msg in msgs:
                pending = msg.metadata.num_pending
                if (msg.headers or {}).get(KV_OP) in ("DEL", "PURGE"):
                    continue
                found.append(
                    Row(msg.subject.removeprefix(prefix), msg.data, msg.metadata.sequence.stream)
                )
    finally:
        await psub.unsubscribe()
    return found

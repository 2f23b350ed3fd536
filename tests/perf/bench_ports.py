"""`port_lease_p50_ms` (group `services`): one lease over `fleet.ctl.ports`, end to end.

A client asks the ports service for one port for a new agent each time: request/reply, the
bind check, the KV create. The floor, measured in the same run on the same server: one raw KV
`create` of a new key, which is the compare-and-set every lease has to make.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgspec
from nats.aio.client import Client

from schemas import subjects
from services import port_broker
from tests.perf.common import emit, fresh_nats, log, p50

LEASES = 500
RANGE = (20000, 29999)


async def lease_times(nc: Client, n: int) -> list[float]:
    running = await port_broker.start(nc, RANGE, follow=False)
    samples = []
    try:
        for i in range(n):
            body = msgspec.json.encode({"op": "lease", "agent": f"b{i}", "names": ["api.http"]})
            t0 = time.perf_counter()
            msg = await nc.request(subjects.control("ports"), body, timeout=5)
            samples.append((time.perf_counter() - t0) * 1000)
            if b'"ok":true' not in msg.data:
                raise RuntimeError(f"lease failed: {msg.data!r}")
    finally:
        await running.close()
    return samples


async def create_times(nc: Client, n: int) -> list[float]:
    kv = await nc.jetstream().key_value(subjects.PORTS_BUCKET)
    samples = []
    for _ in range(n):
        key = f"floor-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        await kv.create(key, b"{}")
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def bench_port_lease(root: Path) -> None:
    del root
    async with fresh_nats() as nc:
        log(f"services: {LEASES} leases, then {LEASES} raw KV creates")
        ours = await lease_times(nc, LEASES)
        floor = await create_times(nc, LEASES)
    emit(
        "port_lease_p50_ms",
        p50(ours),
        "ms",
        p50(floor),
        f"one port per request over fleet.ctl.ports ({LEASES}), bind check included; "
        "floor: one raw KV create of a new key",
    )

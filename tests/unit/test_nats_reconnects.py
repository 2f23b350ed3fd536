"""infra.nats._Reconnects: the wait between reconnects stays within its cap however long NATS
stays away (it overflowed once the failures reached about a thousand)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from infra import nats as fleet_nats


async def test_the_wait_is_capped_after_any_number_of_failures() -> None:
    handler = fleet_nats._Reconnects("test", "nats://127.0.0.1:1", loud=False)
    client = SimpleNamespace(is_reconnecting=True, options={})  # the two members it reads
    handler.nc = cast(Any, client)
    waits = []
    for _ in range(2000):
        await handler.on_error(OSError("connection refused"))
        waits.append(client.options["reconnect_time_wait"])
    assert waits[0] < waits[3]  # it doubles at first
    assert max(waits) <= fleet_nats.RECONNECT_MAX_S * 1.25  # then stays at the cap (with jitter)
    assert handler.failures == 2000

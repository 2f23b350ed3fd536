"""`fleet up`'s last step: the tasks still running once everything is stopped get a bounded
end, even one that swallows its cancel (nats-py does, in its flush), where `asyncio.run`
would wait for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from services import up


def test_a_task_that_swallows_its_cancel_is_named_and_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    ended: list[str] = []

    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):  # as nats-py's flush does
                await asyncio.sleep(3600)

    async def polite() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("polite")

    async def start() -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        tasks = asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(polite())
        await asyncio.sleep(0)  # both running
        return tasks

    try:
        hard, soft = loop.run_until_complete(start())
        with caplog.at_level(logging.WARNING, logger="services.up"):
            up._end_tasks(loop, grace_s=0.5)
        assert soft.cancelled() and ended == ["polite"]
        assert not hard.done()
        said = [r.getMessage() for r in caplog.records]
        assert any("would not end within 0.5 s" in m and "stubborn" in m for m in said), said
    finally:
        loop.close()

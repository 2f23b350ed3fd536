"""The agent's writer lock: a waiter past its budget is refused with what holds the agent."""

from __future__ import annotations

import asyncio

import pytest

from actors.agent.envelope import BUSY_AFTER_S, BUSY_MAX_S, busy_budget
from actors.agent.steplock import StepLock
from schemas import subjects
from schemas.errors import AgentBusy


async def test_a_waiter_past_its_budget_is_told_what_holds_the_agent() -> None:
    lock = StepLock()
    async with lock.step("taking a checkpoint"):
        lock.now_doing("taking a checkpoint: git add")
        with pytest.raises(AgentBusy) as refused:
            async with lock.within(0.05, "a1", "send"):
                raise AssertionError("the lock was held; within must not enter")
    assert refused.value.code == "busy"
    assert str(refused.value).startswith("agent a1 is busy taking a checkpoint: git add (for "), (
        str(refused.value)
    )
    assert refused.value.for_s >= 0.0
    assert "so send did not start; nothing was done" in str(refused.value)
    assert not lock.locked()  # the refused waiter took nothing


async def test_a_waiter_gets_the_lock_once_the_step_ends_in_time() -> None:
    lock = StepLock()
    order: list[str] = []

    async def step() -> None:
        async with lock.step("stopping"):
            await asyncio.sleep(0)
            order.append("step")

    task = asyncio.create_task(step())
    await asyncio.sleep(0)
    async with lock.within(30, "a1", "send"):
        assert lock.doing == "with send"
        order.append("send")
    await task
    assert order == ["step", "send"]
    assert lock.doing == "" and not lock.locked()


async def test_plain_async_with_still_works() -> None:
    lock = StepLock()
    async with lock:
        assert lock.locked() and lock.doing == "working"
    assert not lock.locked()


@pytest.mark.parametrize(
    ("header", "budget"),
    [
        (None, BUSY_AFTER_S),
        ("10", 5.0),
        ("0.5", 0.25),
        ("0", BUSY_AFTER_S),
        ("-3", BUSY_AFTER_S),
        ("nan", BUSY_AFTER_S),
        ("soon", BUSY_AFTER_S),
        ("0.01", 0.05),
        ("100000", BUSY_MAX_S),
    ],
)
def test_the_budget_is_half_the_senders_patience(header: str | None, budget: float) -> None:
    headers = None if header is None else {subjects.TIMEOUT_HEADER: header}
    assert busy_budget(headers) == budget

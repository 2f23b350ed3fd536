"""The recovery ladder's decisions: order of rungs, retry limits, backoff, rollback, reset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas.recovery import (
    Attempt,
    Climb,
    Exhausted,
    Wait,
    delay_s,
    next_rung,
    rungs,
    still_climbing,
)
from schemas.templates import Backoff, RecoverySpec

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
NO_WAIT = RecoverySpec(attempts=2, backoff=Backoff(initial_s=0.0, max_s=0.0, jitter=0.0))


def climb_all(spec: RecoverySpec, *, healthy_checkpoint: bool = False) -> list[str]:
    """Follow the ladder to its end, each attempt made the moment it is allowed."""
    attempts: list[Attempt] = []
    now = T0
    while True:
        d = next_rung(spec, attempts, now=now, healthy_checkpoint=healthy_checkpoint)
        match d:
            case Climb(rung=rung, attempt=n):
                attempts.append(Attempt(rung=rung, attempt=n, at=now))
            case Wait(until=until):
                now = until
            case Exhausted():
                return [a.rung for a in attempts]


def test_first_failure_restarts_the_service_at_once() -> None:
    assert next_rung(RecoverySpec(), [], now=T0) == Climb(rung="restart_service", attempt=1)


def test_each_rung_is_tried_attempts_times_and_ask_human_once() -> None:
    assert climb_all(NO_WAIT) == [
        "restart_service",
        "restart_service",
        "recreate_session",
        "recreate_session",
        "new_ports",
        "new_ports",
        "respawn",
        "respawn",
        "ask_human",
    ]


def test_rollback_is_a_rung_only_with_a_healthy_checkpoint() -> None:
    spec = RecoverySpec(
        rungs=("restart_service", "rollback", "ask_human"),
        attempts=1,
        backoff=NO_WAIT.backoff,
    )
    assert climb_all(spec) == ["restart_service", "ask_human"]
    assert climb_all(spec, healthy_checkpoint=True) == ["restart_service", "rollback", "ask_human"]
    assert rungs(spec, healthy_checkpoint=False) == ("restart_service", "ask_human")


def test_backoff_grows_between_attempts_and_is_capped() -> None:
    spec = RecoverySpec(attempts=3, backoff=Backoff(initial_s=1, max_s=5, multiplier=2, jitter=0))
    first = Attempt(rung="restart_service", attempt=1, at=T0)
    d = next_rung(spec, [first], now=T0 + timedelta(seconds=0.5))
    assert d == Wait(until=T0 + timedelta(seconds=1), rung="restart_service")
    assert next_rung(spec, [first], now=T0 + timedelta(seconds=1)) == Climb(
        rung="restart_service", attempt=2
    )
    assert [delay_s(spec.backoff, n) for n in range(6)] == [0, 1, 2, 4, 5, 5]


def test_jitter_adds_at_most_its_fraction() -> None:
    b = Backoff(initial_s=2, max_s=10, multiplier=2, jitter=0.5)
    assert delay_s(b, 1, rand=0.0) == 2
    assert delay_s(b, 1, rand=0.999) < 3
    assert delay_s(b, 1, rand=7.0) == 3  # a draw outside [0, 1) is clamped


def test_exhausted_after_a_person_was_asked() -> None:
    spec = RecoverySpec(rungs=("ask_human",), backoff=NO_WAIT.backoff)
    asked = [Attempt(rung="ask_human", attempt=1, at=T0)]
    assert next_rung(spec, asked, now=T0 + timedelta(hours=1)) == Exhausted()


def test_a_stable_healthy_run_ends_the_climb() -> None:
    tried = [Attempt(rung="restart_service", attempt=1, at=T0)]
    later = T0 + timedelta(seconds=10)
    assert still_climbing(tried, healthy_since=None, now=later)
    assert still_climbing(tried, healthy_since=later, now=later + timedelta(seconds=5))
    assert not still_climbing(tried, healthy_since=later, now=later + timedelta(seconds=61))
    assert not still_climbing([], healthy_since=None, now=later)


rung_names = st.sampled_from(
    ["restart_service", "recreate_session", "new_ports", "rollback", "respawn", "ask_human"]
)
specs = st.builds(
    RecoverySpec,
    rungs=st.lists(rung_names, min_size=1, max_size=6, unique=True).map(tuple),
    attempts=st.integers(min_value=1, max_value=4),
    backoff=st.builds(
        Backoff,
        initial_s=st.floats(0, 10),
        max_s=st.floats(0, 100),
        multiplier=st.floats(1, 4),
        jitter=st.floats(0, 1),
    ),
)


@given(spec=specs, checkpoint=st.booleans())
def test_any_ladder_climbs_in_order_within_limits_and_ends(
    spec: RecoverySpec, checkpoint: bool
) -> None:
    climbed = climb_all(spec, healthy_checkpoint=checkpoint)
    allowed = rungs(spec, healthy_checkpoint=checkpoint)
    # In the template's order, never going back down, each within its limit.
    positions = [allowed.index(r) for r in climbed]
    assert positions == sorted(positions)
    for rung in allowed:
        limit = 1 if rung == "ask_human" else spec.attempts
        assert climbed.count(rung) == limit
    assert "rollback" not in climbed or checkpoint


@given(
    spec=specs,
    n=st.integers(min_value=1, max_value=8),
    rand=st.floats(0, 1, exclude_max=True),
    wait=st.floats(0, 200),
)
def test_never_climbs_before_the_backoff_ends(
    spec: RecoverySpec, n: int, rand: float, wait: float
) -> None:
    attempts = [Attempt(rung=spec.rungs[0], attempt=1, at=T0) for _ in range(n)]
    now = T0 + timedelta(seconds=wait)
    d = next_rung(spec, attempts, now=now, rand=rand, healthy_checkpoint=True)
    if isinstance(d, Climb):
        assert wait >= delay_s(spec.backoff, n, rand) - 1e-6
    if isinstance(d, Wait):
        assert d.until > now

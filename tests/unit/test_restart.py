"""The restart policy and its backoff (schemas.restart) and the start order of services."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.dependencies import BadDependencies, start_order
from schemas.restart import Done, GiveUp, Restart, RestartTracker, next_delay, wants_restart
from schemas.templates import Backoff, RestartSpec, ServiceSpec

B = Backoff(initial_s=0.1, max_s=2.0, multiplier=2.0, jitter=0.5)


def test_delays_grow_by_the_multiplier_up_to_the_cap() -> None:
    assert [next_delay(B, n, 0.0) for n in range(0, 7)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert next_delay(B, 1000, 0.0) == 2.0  # no overflow for a long streak


@given(st.integers(1, 50), st.floats(0, 1, exclude_max=True))
def test_jitter_adds_at_most_its_fraction(attempt: int, rand: float) -> None:
    plain = next_delay(B, attempt, 0.0)
    assert plain <= next_delay(B, attempt, rand) <= plain * (1 + B.jitter)


@pytest.mark.parametrize(
    ("policy", "code", "sig", "restart"),
    [
        ("no", 1, None, False),
        ("on-failure", 0, None, False),
        ("on-failure", 1, None, True),
        ("on-failure", None, 9, True),
        ("always", 0, None, True),
    ],
)
def test_policy(policy: str, code: int | None, sig: int | None, restart: bool) -> None:
    assert wants_restart(RestartSpec(policy=policy), code, sig) is restart  # type: ignore[arg-type]


def spec(**kw: object) -> RestartSpec:
    return RestartSpec(backoff=Backoff(initial_s=1.0, jitter=0.0), **kw)  # type: ignore[arg-type]


def test_gives_up_after_max_restarts_in_a_row() -> None:
    t = RestartTracker(spec(max_restarts=2, reset_after_s=10))
    t.started(0)
    assert t.exited(1, 1, None, 0.0) == Restart(1, 1.0)
    t.started(2)
    assert t.exited(3, 1, None, 0.0) == Restart(2, 2.0)
    t.started(5)
    verdict = t.exited(6, 1, None, 0.0)
    assert isinstance(verdict, GiveUp)
    assert "failed 3 times in a row (max_restarts 2" in verdict.reason


def test_a_stable_run_resets_the_streak() -> None:
    t = RestartTracker(spec(max_restarts=2, reset_after_s=10))
    t.started(0)
    assert t.exited(1, 1, None, 0.0) == Restart(1, 1.0)
    t.started(2)
    assert t.exited(3, 1, None, 0.0) == Restart(2, 2.0)
    t.started(5)
    assert t.exited(15, 1, None, 0.0) == Restart(1, 1.0)  # ran 10 s: forgiven
    assert t.total == 3


def test_a_clean_exit_under_on_failure_is_done_and_a_restart_by_hand_starts_over() -> None:
    t = RestartTracker(spec(max_restarts=1))
    t.started(0)
    assert t.exited(1, 0, None, 0.0) == Done()
    t.started(2)
    assert t.exited(3, 1, None, 0.0) == Restart(1, 1.0)
    t.started(4)
    assert isinstance(t.exited(5, 1, None, 0.0), GiveUp)
    t.restarted_by_hand(6)
    assert t.exited(7, 1, None, 0.0) == Restart(1, 1.0)


def svc(*deps: str) -> ServiceSpec:
    return ServiceSpec(command="true", depends_on=dict.fromkeys(deps, "started"))


def test_start_order_puts_dependencies_first_and_keeps_ties_in_order() -> None:
    services = {"worker": svc("api", "db"), "api": svc("db"), "db": svc(), "web": svc()}
    assert start_order(services) == ["db", "web", "api", "worker"]


def test_cycles_and_unknown_dependencies_are_refused_with_a_sentence() -> None:
    with pytest.raises(BadDependencies, match=r"a is in a dependency cycle: a -> b -> a"):
        start_order({"a": svc("b"), "b": svc("a")})
    with pytest.raises(BadDependencies, match=r"api depends on 'db', which is not a service"):
        start_order({"api": svc("db")})

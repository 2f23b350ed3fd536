"""The recovery ladder as a pure decision: given what failed and what was tried, which rung next.

The health service observes; this module decides. Rungs come from the template's
`RecoverySpec` (restart_service -> recreate_session -> new_ports -> rollback -> respawn ->
ask_human by default), each tried `attempts` times, with a backoff between attempts that grows
over the whole climb. `rollback` is only a rung when a checkpoint taken while the agent was
healthy exists; otherwise it is skipped. `ask_human` is tried once: after it, the ladder is
exhausted and waits for a person (or for the service to become healthy again, which resets it).

No clock inside: `now` and the jitter draw `rand` are passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

from schemas.restart import next_delay
from schemas.templates import Backoff, RecoverySpec

Rung = Literal[
    "restart_service", "recreate_session", "new_ports", "rollback", "respawn", "ask_human"
]
ONCE: frozenset[str] = frozenset({"ask_human"})  # rungs that are never repeated
STABLE_S = 60.0  # healthy this long after a climb resets the ladder
# How an agent's failure starts when its tmux session vanished: the health service rebuilds the
# session (the recreate_session rung) instead of leaving the agent in ERROR for a person.
SESSION_GONE = "its tmux session is gone"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One rung tried, at `at` (the `attempt`-th try of that rung)."""

    rung: str
    attempt: int
    at: datetime
    service: str = ""


class Climb(msgspec.Struct, frozen=True, kw_only=True, tag="climb"):
    """Try `rung` now; it is that rung's `attempt`-th try."""

    rung: str
    attempt: int


class Wait(msgspec.Struct, frozen=True, kw_only=True, tag="wait"):
    """Too early for the next rung: the backoff ends at `until`."""

    until: datetime
    rung: str


class Exhausted(msgspec.Struct, frozen=True, kw_only=True, tag="exhausted"):
    """Every rung was tried (a person was asked); nothing more to do automatically."""


Decision = Climb | Wait | Exhausted


def delay_s(backoff: Backoff, climbed: int, rand: float = 0.0) -> float:
    """The pause before the next rung after `climbed` earlier attempts (0 before the first):
    the same exponential backoff, cap and jitter as a service's restarts."""
    return next_delay(backoff, climbed, rand)


def rungs(spec: RecoverySpec, *, healthy_checkpoint: bool) -> tuple[str, ...]:
    """The rungs this climb may use: the template's, without rollback when nothing to go back to."""
    return tuple(r for r in spec.rungs if r != "rollback" or healthy_checkpoint)


def next_rung(
    spec: RecoverySpec,
    attempts: tuple[Attempt, ...] | list[Attempt],
    *,
    now: datetime,
    healthy_checkpoint: bool = False,
    rand: float = 0.0,
) -> Decision:
    """Which rung to try next for a failure that persists, given this climb's `attempts`.

    `attempts` are those since the ladder was last reset (see `still_climbing`), in order.
    """
    ladder = rungs(spec, healthy_checkpoint=healthy_checkpoint)
    tried: dict[str, int] = {}
    for a in attempts:
        tried[a.rung] = tried.get(a.rung, 0) + 1
    for rung in ladder:
        limit = 1 if rung in ONCE else max(spec.attempts, 1)
        if tried.get(rung, 0) < limit:
            break
    else:
        return Exhausted()
    if attempts:
        until = attempts[-1].at + timedelta(seconds=delay_s(spec.backoff, len(attempts), rand))
        if now < until:
            return Wait(until=until, rung=rung)
    return Climb(rung=rung, attempt=tried.get(rung, 0) + 1)


def still_climbing(
    attempts: tuple[Attempt, ...] | list[Attempt],
    *,
    healthy_since: datetime | None,
    now: datetime,
    stable_s: float = STABLE_S,
) -> bool:
    """False when the service has been healthy for `stable_s` since the last attempt: the climb
    is over and the next failure starts from the bottom rung again."""
    if not attempts or healthy_since is None:
        return bool(attempts)
    if healthy_since < attempts[-1].at:
        return True
    return (now - healthy_since).total_seconds() < stable_s

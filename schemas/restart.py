"""When a dev service that exited comes back: the restart policy and its backoff, as pure logic.

The agent actor restarts its services with this; the health service reads the same rules.
No clock inside: `now` (monotonic seconds) and the jitter draw `rand` in [0, 1) are passed in.

Semantics (what supervisord and process-compose users expect, plus a reset):
- policy `no` never restarts, `on-failure` restarts after a non-zero exit or a signal,
  `always` restarts after any exit;
- the n-th restart in a row waits `initial * multiplier^(n-1)`, capped at `max`, plus up to
  `jitter` of itself at random, so many services that failed together do not return together;
- a run that lasted `reset_after_s` counts as stable: the streak starts over at the first delay;
- after `max_restarts` restarts in a row the service is left down (the health service's
  recovery ladder takes over from there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.templates import Backoff, RestartSpec


def next_delay(backoff: Backoff, attempt: int, rand: float) -> float:
    """The pause before restart number `attempt` of a streak (1 for the first), in seconds."""
    if attempt <= 0:
        return 0.0
    base = backoff.initial_s * backoff.multiplier ** min(attempt - 1, 64)
    base = min(base, backoff.max_s)
    return base + base * backoff.jitter * min(max(rand, 0.0), 1.0)


def failed(code: int | None, signal: int | None) -> bool:
    """An exit counts as a failure unless it was a clean exit 0."""
    return signal is not None or code != 0


def wants_restart(spec: RestartSpec, code: int | None, signal: int | None) -> bool:
    """Whether the policy asks for a restart after this exit (limits aside)."""
    if spec.policy == "always":
        return True
    return spec.policy == "on-failure" and failed(code, signal)


@dataclass(frozen=True)
class Restart:
    """Restart after `delay_s`; it is restart number `attempt` of the current streak."""

    attempt: int
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    """Leave the service down; `reason` is a sentence for the log and for a person."""

    reason: str


@dataclass(frozen=True)
class Done:
    """The policy does not restart after this exit (e.g. `on-failure` and an exit 0)."""


Verdict = Restart | GiveUp | Done


@dataclass
class RestartTracker:
    """One service's restart streak: call `started` at each start and `exited` at each exit."""

    spec: RestartSpec
    attempts: int = 0  # restarts in the current streak
    started_at: float | None = None
    total: int = field(default=0)  # restarts ever, for display

    def started(self, now: float) -> None:
        self.started_at = now

    def stable(self, now: float) -> bool:
        """Whether the current run has lasted long enough to forgive the earlier failures."""
        return self.started_at is not None and now - self.started_at >= self.spec.reset_after_s

    def exited(self, now: float, code: int | None, signal: int | None, rand: float) -> Verdict:
        """Decide what follows an exit at `now`; a `Restart` counts as made."""
        if self.stable(now):
            self.attempts = 0
        self.started_at = None
        if not wants_restart(self.spec, code, signal):
            return Done()
        if self.attempts >= self.spec.max_restarts:
            runs = self.attempts + 1
            return GiveUp(
                f"it failed {runs} time{'s' if runs > 1 else ''} in a row "
                f"(max_restarts {self.spec.max_restarts}, each run shorter than "
                f"{self.spec.reset_after_s:g}s)"
            )
        self.attempts += 1
        self.total += 1
        return Restart(self.attempts, next_delay(self.spec.backoff, self.attempts, rand))

    def restarted_by_hand(self, now: float) -> None:
        """A restart a person or the health service asked for: a fresh streak, since someone
        decided the service deserves one (after a fix, or as a rung of the recovery ladder)."""
        self.attempts = 0
        self.total += 1
        self.started_at = now

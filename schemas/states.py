"""Lifecycle and activity, and the one table of transitions each allows.

Everything else (decide, the audit, the dashboard) reads these tables; nothing restates them.
"""

from __future__ import annotations

import enum


class Lifecycle(enum.StrEnum):
    NEW = "NEW"  # before agent.created: the agent does not exist yet
    SPAWNING = "SPAWNING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


class Activity(enum.StrEnum):
    READY = "READY"
    WORKING = "WORKING"
    AWAITING_INPUT = "AWAITING_INPUT"
    VALIDATING = "VALIDATING"
    LOGIN_REQUIRED = "LOGIN_REQUIRED"  # a kind of AWAITING_INPUT: a person must log in


L, A = Lifecycle, Activity

LIFECYCLE: dict[Lifecycle, frozenset[Lifecycle]] = {
    L.NEW: frozenset({L.SPAWNING}),
    L.SPAWNING: frozenset({L.RUNNING, L.STOPPING, L.ERROR}),
    L.RUNNING: frozenset({L.PAUSED, L.STOPPING, L.ERROR}),
    L.PAUSED: frozenset({L.RUNNING, L.STOPPING, L.ERROR}),
    L.STOPPING: frozenset({L.STOPPED, L.ERROR}),
    L.STOPPED: frozenset({L.SPAWNING, L.ERROR}),
    # From ERROR an agent is respawned (the recovery ladder) or stopped to clean up.
    L.ERROR: frozenset({L.SPAWNING, L.STOPPING}),
}

ACTIVITY: dict[Activity, frozenset[Activity]] = {
    A.READY: frozenset({A.WORKING, A.AWAITING_INPUT, A.VALIDATING, A.LOGIN_REQUIRED}),
    A.WORKING: frozenset({A.READY, A.AWAITING_INPUT, A.VALIDATING, A.LOGIN_REQUIRED}),
    A.VALIDATING: frozenset({A.READY, A.WORKING, A.AWAITING_INPUT, A.LOGIN_REQUIRED}),
    # Validation follows work; a waiting agent first resumes work. A waiting agent that asks
    # a new question stays waiting: the new question is recorded (a person must see it).
    A.AWAITING_INPUT: frozenset({A.AWAITING_INPUT, A.READY, A.WORKING, A.LOGIN_REQUIRED}),
    A.LOGIN_REQUIRED: frozenset({A.LOGIN_REQUIRED, A.READY, A.WORKING, A.AWAITING_INPUT}),
}

# Activity is observed only while the assistant can be seen working.
ACTIVE = frozenset({L.RUNNING})
# Lifecycles in which the agent owns live resources (a session, processes).
LIVE = frozenset({L.SPAWNING, L.RUNNING, L.PAUSED, L.STOPPING})


def lifecycle_allows(current: Lifecycle, to: Lifecycle) -> bool:
    return to in LIFECYCLE[current]


def activity_allows(current: Activity, to: Activity) -> bool:
    return to in ACTIVITY[current]


def sources_of(to: Lifecycle) -> list[Lifecycle]:
    """The lifecycles from which `to` may be reached, in declaration order (for sentences)."""
    return [src for src, dests in LIFECYCLE.items() if to in dests]

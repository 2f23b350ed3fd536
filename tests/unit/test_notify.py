"""schemas.notify without NATS: what is notable, which rules route it, dedupe, other shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from schemas import events as e
from schemas.notify import (
    DEFAULT_RULES,
    AlertmanagerPayload,
    Dedupe,
    Notice,
    Rule,
    channels_for,
    classify,
    from_alertmanager,
    from_bus,
    is_stale,
)
from schemas.states import Activity, Lifecycle

NOW = datetime(2025, 1, 1, tzinfo=UTC)
ALL = ("chat", "phone")


def test_waiting_and_login_notify_with_what_the_agent_asks() -> None:
    waiting = classify(
        e.ActivityChanged(
            agent_id="a1",
            event_id="x",
            at=NOW,
            to=Activity.AWAITING_INPUT,
            detail="Apply edit? [y/n]",
        )
    )
    assert (waiting.kind, waiting.severity) == ("activity.AWAITING_INPUT", "warning")
    assert waiting.message == "agent a1 is waiting for input: Apply edit? [y/n]"
    login = classify(
        e.ActivityChanged(
            agent_id="a1", event_id="x", at=NOW, to=Activity.LOGIN_REQUIRED, detail="Run /login"
        )
    )
    assert channels_for(waiting, DEFAULT_RULES, ALL) == list(ALL)
    assert channels_for(login, DEFAULT_RULES, ALL) == list(ALL)
    working = classify(e.ActivityChanged(agent_id="a1", event_id="x", at=NOW, to=Activity.WORKING))
    assert channels_for(working, DEFAULT_RULES, ALL) == []


def test_error_and_ask_human_are_critical() -> None:
    failed = classify(
        e.LifecycleChanged(
            agent_id="a1", event_id="x", at=NOW, to=Lifecycle.ERROR, reason="tmux died"
        )
    )
    assert (failed.severity, failed.message) == ("critical", "agent a1 failed: tmux died")
    human = classify(e.RecoveryEscalated(agent_id="a1", event_id="x", at=NOW, rung="ask_human"))
    assert human.severity == "critical" and channels_for(human, DEFAULT_RULES, ALL)


def test_rules_match_kinds_agents_and_severities_with_globs() -> None:
    rules = (
        Rule(name="web", match=("service.*",), agents=("web-*",), channels=("chat",)),
        Rule(name="crit", severities=("critical",), channels=("phone",)),
    )
    restarted = Notice(kind="service.restarted", severity="warning", message="m", agent_id="web-1")
    assert channels_for(restarted, rules, ALL) == ["chat"]
    other = Notice(kind="service.restarted", severity="warning", message="m", agent_id="api-1")
    assert channels_for(other, rules, ALL) == []
    assert channels_for(Notice(kind="x", severity="critical", message="m"), rules, ALL) == ["phone"]


def test_dedupe_window_and_staleness() -> None:
    dedupe = Dedupe(60)
    notice = Notice(kind="k", message="m", at=NOW)
    assert dedupe.first(notice, 0.0) and not dedupe.first(notice, 30.0) and dedupe.first(notice, 61)
    assert is_stale(notice, NOW + timedelta(hours=1), timedelta(minutes=10))
    assert not is_stale(notice, NOW + timedelta(minutes=1), timedelta(minutes=10))


def test_notices_of_other_services_and_alerts() -> None:
    health = from_bus("critical", {"agent": "a7", "reason": "web down", "source": "health"}, NOW)
    assert health is not None and health.kind == "health.ask_human"
    assert health.message == "agent a7 needs a person: web down"
    dead = from_bus("warning", {"kind": "mail.dead_letter", "agent_id": "a2", "message": "m"}, NOW)
    assert dead is not None and channels_for(dead, DEFAULT_RULES, ALL)
    assert from_bus("info", [1, 2], NOW) is None
    payload = msgspec.convert(
        {"alerts": [{"status": "resolved", "labels": {"alertname": "A"}}]}, AlertmanagerPayload
    )
    (resolved,) = from_alertmanager(payload, NOW)
    assert (resolved.kind, resolved.severity, resolved.message) == (
        "alert.A",
        "info",
        "resolved: A",
    )

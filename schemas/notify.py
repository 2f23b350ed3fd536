"""Notifications as data: what is worth telling a person, the rules that route it, and the
dedupe window. Pure: the notifications service (services/notifier.py) does the sending.

A `Notice` is what travels on `fleet.notify.<severity>`; others publish the same shape (the
mail dead-letter notice has `kind`, `severity`, `agent_id`, `message`), so every source reaches
the same channels. `classify` turns an event into a notice; a `Rule` picks channels for it by
kind (or event type), agent and severity, with shell-style globs.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from datetime import datetime, timedelta

import msgspec

from schemas import events as e
from schemas.states import Activity, Lifecycle

SEVERITIES = ("critical", "warning", "info")


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """One notification, as published on `fleet.notify.<severity>` for UIs."""

    kind: str  # e.g. activity.AWAITING_INPUT, lifecycle.ERROR, recovery.ask_human, alert.X
    severity: str = "info"
    message: str
    agent_id: str = ""
    event_type: str = ""  # the event's tag, when it came from the log
    source: str = ""  # events | alertmanager | the publishing service
    at: datetime | None = None
    detail: str = ""  # what the agent asks, when it waits


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Route notices whose kind (or event type), agent and severity match, to `channels`."""

    name: str
    match: tuple[str, ...] = ()  # globs over kind and event type; empty: any
    agents: tuple[str, ...] = ()  # globs over the agent id; empty: any
    severities: tuple[str, ...] = ()  # empty: any
    channels: tuple[str, ...] = ()  # names of channels; empty: every channel

    def applies(self, notice: Notice) -> bool:
        if self.severities and notice.severity not in self.severities:
            return False
        if self.agents and not any(fnmatch.fnmatchcase(notice.agent_id, a) for a in self.agents):
            return False
        names = (notice.kind, notice.event_type)
        return not self.match or any(
            fnmatch.fnmatchcase(n, m) for m in self.match for n in names if n
        )


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(name="waiting", match=("activity.AWAITING_INPUT", "activity.LOGIN_REQUIRED")),
    Rule(name="failed", match=("lifecycle.ERROR",)),
    Rule(name="ask-human", match=("recovery.ask_human", "*.ask_human")),
    Rule(name="alerts", match=("alert.*",)),
    Rule(name="critical", severities=("critical",)),
    Rule(name="dead-letters", match=("mail.dead_letter",)),
)


def channels_for(notice: Notice, rules: tuple[Rule, ...], every: tuple[str, ...]) -> list[str]:
    """The channels of every rule that applies, in first-mention order."""
    found: list[str] = []
    for rule in rules:
        if rule.applies(notice):
            for name in rule.channels or every:
                if name not in found:
                    found.append(name)
    return found


def _notice(
    event: e.AgentEvent, kind: str, message: str, severity: str = "info", detail: str = ""
) -> Notice:
    tag = str(type(event).__struct_config__.tag)
    return Notice(
        kind=kind,
        severity=severity,
        message=message,
        detail=detail,
        agent_id=event.agent_id,
        event_type=tag,
        source="events",
        at=event.at,
    )


def classify(event: e.AgentEvent) -> Notice:
    """What an event says to a person, and how urgent it is."""
    a = event.agent_id
    match event:
        case e.ActivityChanged(to=Activity.AWAITING_INPUT, detail=d):
            text = f"agent {a} is waiting for input" + (f": {d}" if d else "")
            return _notice(event, "activity.AWAITING_INPUT", text, "warning", d)
        case e.ActivityChanged(to=Activity.LOGIN_REQUIRED, detail=d):
            text = f"agent {a} needs a login" + (f": {d}" if d else "")
            return _notice(event, "activity.LOGIN_REQUIRED", text, "warning", d)
        case e.ActivityChanged(to=to):
            return _notice(event, f"activity.{to.value}", f"agent {a} is {to.value}")
        case e.LifecycleChanged(to=Lifecycle.ERROR, reason=r):
            text = f"agent {a} failed" + (f": {r}" if r else "")
            return _notice(event, "lifecycle.ERROR", text, "critical")
        case e.LifecycleChanged(to=to):
            return _notice(event, f"lifecycle.{to.value}", f"agent {a} is {to.value}")
        case e.RecoveryEscalated(rung="ask_human", reason=r):
            text = f"agent {a} needs a person: recovery gave up" + (f" ({r})" if r else "")
            return _notice(event, "recovery.ask_human", text, "critical")
        case e.RecoveryEscalated(rung=rung, reason=r, attempt=n):
            text = f"agent {a}: recovery {rung} (attempt {n})" + (f": {r}" if r else "")
            return _notice(event, f"recovery.{rung}", text, "warning")
        case e.ServiceHealth(healthy=False, service=s, detail=d):
            text = f"agent {a}: service {s} is unhealthy" + (f" ({d})" if d else "")
            return _notice(event, "service.unhealthy", text, "warning")
        case e.ServiceRestarted(service=s, attempt=n):
            text = f"agent {a}: service {s} restarted (attempt {n})"
            return _notice(event, "service.restarted", text, "warning")
        case e.ResourcesExceeded(resource=r, value=v, limit=lim, action=act):
            text = f"agent {a}: {r} {v:g} over its limit {lim:g}" + (f" ({act})" if act else "")
            return _notice(event, "resources.exceeded", text, "warning")
    tag = str(type(event).__struct_config__.tag)
    return _notice(event, tag, f"agent {a}: {tag}")


def is_stale(notice: Notice, now: datetime, max_age: timedelta) -> bool:
    """A notice about an old event (a service catching up on history) is not sent."""
    return notice.at is not None and now - notice.at > max_age


class Dedupe:
    """Drop a notice seen (same kind, agent and message) within the window; bounded in size."""

    def __init__(self, window_s: float, max_keys: int = 10_000) -> None:
        self.window_s, self.max_keys = window_s, max_keys
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def first(self, notice: Notice, now: float) -> bool:
        key = (notice.kind, notice.agent_id, notice.message)
        last = self._seen.pop(key, None)
        if last is not None and now - last < self.window_s:
            self._seen[key] = last
            return False
        self._seen[key] = now
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return True


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert of an Alertmanager webhook (version 4 payload)."""

    status: str = "firing"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: str = ""  # Alertmanager's field name


class AlertmanagerPayload(msgspec.Struct, frozen=True, kw_only=True):
    version: str = "4"
    status: str = "firing"
    receiver: str = ""
    alerts: tuple[Alert, ...] = ()


def from_alertmanager(payload: AlertmanagerPayload, now: datetime) -> list[Notice]:
    """Each alert as a notice: kind `alert.<alertname>`, severity from its `severity` label."""
    notices = []
    for alert in payload.alerts:
        name = alert.labels.get("alertname", "alert")
        severity = alert.labels.get("severity", "warning")
        severity = severity if severity in SEVERITIES else "warning"
        text = alert.annotations.get("summary") or alert.annotations.get("description") or name
        if alert.status == "resolved":
            severity, text = "info", f"resolved: {text}"
        agent = alert.labels.get("agent", "")
        notices.append(
            Notice(
                kind=f"alert.{name}",
                severity=severity,
                message=text,
                agent_id=agent,
                source="alertmanager",
                at=now,
            )
        )
    return notices


def from_bus(severity: str, data: object, now: datetime) -> Notice | None:
    """A notice another service published on `fleet.notify.<severity>`, in whatever shape it
    uses (the mail dead-letter notice: kind, agent_id, message; the health service's
    ask_human: agent, reason, source); None when it is not a JSON object."""
    if not isinstance(data, dict):
        return None

    def text(*keys: str) -> str:
        for key in keys:
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
        return ""

    source = text("source")
    kind = text("kind") or (f"{source}.ask_human" if source == "health" else "")
    severity = severity if severity in SEVERITIES else text("severity") or "warning"
    agent = text("agent_id", "agent")
    message = (
        text("message", "text", "reason") or f"{kind or 'notice'} from {source or 'a service'}"
    )
    if source == "health" and agent and not message.startswith("agent"):
        message = f"agent {agent} needs a person: {message}"
    return Notice(
        kind=kind or f"notice.{severity}",
        severity=severity,
        message=message,
        agent_id=agent,
        source=source or "bus",
        at=now,
    )

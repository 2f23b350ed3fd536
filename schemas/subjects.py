"""Every NATS subject, stream and bucket name, built in one place from checked tokens.

A token that NATS would read as structure (a dot splits subjects, `*` and `>` are wildcards,
whitespace ends the subject) is refused here, so no other module ever writes a subject literal.
"""

from __future__ import annotations

import re

from schemas.errors import InvalidName

EVENTS_STREAM = "FLEET_EVENTS"
MAIL_STREAM = "FLEET_MAIL"
MAIL_DLQ_STREAM = "FLEET_MAIL_DLQ"  # mail that reached max_deliver unacknowledged
SNAPSHOTS_BUCKET = "fleet_snapshots"
REGISTRY_BUCKET = "fleet_registry"
PORTS_BUCKET = "fleet_ports"
TEMPLATES_BUCKET = "fleet_templates"
SLOTS_BUCKET = "fleet_slots"  # warm-pool actor slot -> the agent it was bound to
BUCKETS = (SNAPSHOTS_BUCKET, REGISTRY_BUCKET, PORTS_BUCKET, TEMPLATES_BUCKET, SLOTS_BUCKET)
# A request header: how long its sender waits for the reply, in seconds. An agent answers a
# command it cannot start in half that time with `busy` instead of leaving it unanswered.
TIMEOUT_HEADER = "Fleet-Timeout"

_ROOT = "fleet"
ALL_EVENTS = f"{_ROOT}.evt.>"
ALL_MAIL = f"{_ROOT}.mail.>"
ALL_DEAD_MAIL = f"{_ROOT}.deadmail.>"
ALL_HEALTH = f"{_ROOT}.health.*"  # every agent's health observations
ALL_NOTIFY = f"{_ROOT}.notify.*"  # notifications of every severity
ALL_COMMANDS = f"{_ROOT}.cmd.*"  # the supervisor's fallback: answers ids no agent serves
UNKNOWN_AGENT_QUEUE = "fleet-unknown-agent"
ALL_MAIL_RELAY = f"{_ROOT}.ctl.mail.*"  # mail agents send, checked by the relay
ALL_TOPIC_RELAY = f"{_ROOT}.ctl.topic.*"  # topic messages agents send, likewise
# Every `fleet.ctl.<verb>` something serves (a test greps the code for each verb it uses);
# those in CONTROL_FAMILIES also take one more token (`fleet.ctl.ports.<node>`,
# `fleet.ctl.mail.<sender>`). No catch-all subscription answers the others: a wildcard
# responder would hide NATS's "no responders" for every known verb whose service is not
# running, which the templates, ports and credentials clients act on. A raw NATS request to
# an unknown verb gets that status (503) at once; fleetd's own clients refuse it before
# sending, with the list of verbs (`unknown_verb`).
CONTROL_VERBS = ("spawn", "list", "find", "acquire", "creds", "ports", "templates", "health")
CONTROL_FAMILIES = ("ports", "task", "mail", "topic")
PRIORITIES = ("critical", "high", "normal", "low")
SEVERITIES = ("critical", "warning", "info")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RULE = "use 1 to 64 letters, digits, '-' or '_' (no dots, spaces, '*' or '>')"


def token(value: str, what: str = "agent id") -> str:
    """Return `value` if it is safe as one subject token, else raise `InvalidName`."""
    if not isinstance(value, str):
        raise InvalidName(what, repr(value), f"expected a string, got {type(value).__name__}")
    if _TOKEN.fullmatch(value) is None:
        raise InvalidName(what, value, _RULE)
    return value


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidName(what, str(value), "expected one of " + ", ".join(allowed))
    return value


def events(agent_id: str) -> str:
    """The subject of one agent's event log."""
    return f"{_ROOT}.evt.{token(agent_id)}"


def agent_from_events(subject: str) -> str:
    """The agent id of an event-log subject (`fleet.evt.a1` -> `a1`)."""
    prefix = f"{_ROOT}.evt."
    if not subject.startswith(prefix):
        raise InvalidName("event subject", subject, f"expected {prefix}<agent_id>")
    return token(subject[len(prefix) :])


def command(agent_id: str) -> str:
    """Request/reply subject that the agent's actor answers."""
    return f"{_ROOT}.cmd.{token(agent_id)}"


def hook(agent_id: str) -> str:
    """Where an agent's own processes report (`fleet hook`, from its assistant's hooks): a
    request its actor checks and answers; the agent's NATS user may publish only its own."""
    return f"{_ROOT}.hook.{token(agent_id)}"


def control(verb: str) -> str:
    """Fleet-wide request/reply subject: spawn, list, find, templates, ports."""
    return f"{_ROOT}.ctl.{token(verb, 'control verb')}"


def control_served(subject: str) -> bool:
    """Whether `subject` (under `fleet.ctl.`) is one that some service of fleetd answers."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[:2] != [_ROOT, "ctl"]:
        return False
    if len(parts) == 3:
        return parts[2] in CONTROL_VERBS
    return len(parts) == 4 and parts[2] in CONTROL_FAMILIES


def node_control(verb: str, node: str) -> str:
    """`fleet.ctl.<verb>.<node>`: a request for the service of one Ray node (ports binds there)."""
    return f"{control(verb)}.{token(node, 'node id')}"


def mail_relay(sender: str) -> str:
    """`fleet.ctl.mail.<sender>`: where an agent sends mail, checked and stored by the
    supervisor; an agent's NATS user may publish there for itself only."""
    return f"{control('mail')}.{token(sender, 'mail sender')}"


def topic_relay(sender: str) -> str:
    """`fleet.ctl.topic.<sender>`: where an agent publishes on a topic (checked, then sent on)."""
    return f"{control('topic')}.{token(sender, 'topic sender')}"


def relay_sender(subject: str) -> str:
    """The sender of a relayed message (`fleet.ctl.mail.a1` -> `a1`)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != [_ROOT, "ctl"] or parts[2] not in ("mail", "topic"):
        raise InvalidName("relay subject", subject, f"expected {_ROOT}.ctl.mail.<sender>")
    return token(parts[3], "sender")


def mail(agent_id: str, priority: str) -> str:
    return f"{_ROOT}.mail.{token(agent_id)}.{_one_of(priority, PRIORITIES, 'priority')}"


def mailbox(agent_id: str) -> str:
    """Every priority of one agent's mail: `fleet.mail.<agent>.*`."""
    return f"{_ROOT}.mail.{token(agent_id)}.*"


def mail_of(subject: str) -> tuple[str, str]:
    """(agent id, priority) of a mail subject (`fleet.mail.a1.high` -> `("a1", "high")`)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != [_ROOT, "mail"]:
        raise InvalidName("mail subject", subject, f"expected {_ROOT}.mail.<agent>.<priority>")
    return token(parts[2]), _one_of(parts[3], PRIORITIES, "priority")


def dead_mail(agent_id: str, priority: str) -> str:
    """Where mail that was never acknowledged goes (stream `FLEET_MAIL_DLQ`)."""
    return f"{_ROOT}.deadmail.{token(agent_id)}.{_one_of(priority, PRIORITIES, 'priority')}"


def mail_consumer(agent_id: str, priority: str) -> str:
    """The durable pull consumer that reads one agent's mail of one priority."""
    return f"mail_{token(agent_id)}_{_one_of(priority, PRIORITIES, 'priority')}"


def agent_from_command(subject: str) -> str:
    """The raw last token of a command subject (`fleet.cmd.a1` -> `a1`), not checked."""
    prefix = f"{_ROOT}.cmd."
    if not subject.startswith(prefix):
        raise InvalidName("command subject", subject, f"expected {prefix}<agent_id>")
    return subject[len(prefix) :]


def health(agent_id: str) -> str:
    return f"{_ROOT}.health.{token(agent_id)}"


def notify(severity: str) -> str:
    return f"{_ROOT}.notify.{_one_of(severity, SEVERITIES, 'severity')}"


def topic(name: str) -> str:
    """A pub/sub topic; dotted names and the NATS wildcards `*` and a final `>` are allowed."""
    parts = name.split(".") if isinstance(name, str) else []
    if not parts or len(name) > 200:
        raise InvalidName("topic", str(name), "expected 1 to 200 characters of dotted tokens")
    for i, part in enumerate(parts):
        if part == "*" or (part == ">" and i == len(parts) - 1):
            continue
        token(part, "topic token")
    return f"{_ROOT}.topic.{name}"

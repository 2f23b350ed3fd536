"""Every type that crosses the wire, by name, and its JSON Schema (`fleet schema`).

One entry per document: a command union, a request, a reply, an event union, a message. Any
client in any language can validate what it sends and reads against these. A new wire type is
one row in `WIRE_TYPES`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas import commands, control, discovery, events, mail, ports, replies, templates


class AgentReply(replies.Reply, frozen=True, kw_only=True):
    """The reply to a command on `fleet.cmd.<id>` and to `fleet.ctl.spawn`."""

    agent: control.AgentView
    pooled: bool | None = None  # spawn only: a warm pool actor was used
    output: str | None = None  # `output` only
    session: str | None = None  # `attach` only
    argv: list[str] | None = None  # `attach` only
    repeated: bool | None = None  # a command sent again with an id already applied


class OutputReply(replies.Reply, frozen=True, kw_only=True):
    """The reply to `output`: what the agent's window shows."""

    output: str = ""


class ProbesReply(replies.Reply, frozen=True, kw_only=True):
    """The reply to `probe_sandbox`: one row per probe (`fleet doctor --sandbox`)."""

    probes: list[dict[str, Any]] = []


class CheckpointReply(AgentReply, frozen=True, kw_only=True):
    """The reply to `checkpoint`: its number and commit."""

    checkpoint: int
    commit: str


class RollbackReply(AgentReply, frozen=True, kw_only=True):
    """The reply to `rollback`: where it went, and the checkpoint of the work before it."""

    checkpoint: int
    saved_checkpoint: int
    commit: str
    restarted: list[str] = []


class AgentsReply(replies.Reply, frozen=True, kw_only=True):
    """The reply to `fleet.ctl.list`."""

    agents: list[control.AgentView]


class RegistryReply(replies.Reply, frozen=True, kw_only=True):
    """The reply to `fleet.ctl.find` and `fleet.ctl.acquire` (`spawned`: acquire only)."""

    agents: list[discovery.RegistryEntry]
    spawned: list[str] = []


# A reply the CLI shows whole (`fleet health`, `fleet template`): its fields as they came.
Fields = dict[str, Any]


# name -> type; the name is the file `fleet schema --out DIR` writes (`<name>.json`).
WIRE_TYPES: dict[str, Any] = {
    "command": commands.AgentCommand,  # fleet.cmd.<agent_id>
    "agent_reply": AgentReply,
    "output_reply": OutputReply,
    "probes_reply": ProbesReply,
    "checkpoint_reply": CheckpointReply,
    "rollback_reply": RollbackReply,
    "error_reply": replies.ErrorReply,  # any request, when ok is false
    "event": events.AgentEvent,  # fleet.evt.<agent_id>
    "spawn_request": control.SpawnRequest,  # fleet.ctl.spawn
    "list_request": control.ListRequest,  # fleet.ctl.list
    "agents_reply": AgentsReply,
    "find_request": discovery.FindRequest,  # fleet.ctl.find
    "acquire_request": discovery.AcquireRequest,  # fleet.ctl.acquire
    "registry_reply": RegistryReply,
    "registry_entry": discovery.RegistryEntry,  # KV fleet_registry
    "mail_message": mail.MailMessage,  # fleet.mail.<agent_id>.<priority>
    "mail_send": mail.MailSend,  # fleet.ctl.mail.<sender>: an agent's mail, by the relay
    "inbox_item": mail.InboxItem,  # `fleet inbox --json`
    "dead_letter_notice": mail.DeadLetterNotice,  # fleet.notify.warning
    "ports_request": ports.PortsOp,  # fleet.ctl.ports
    "template_request": templates.TemplateOp,  # fleet.ctl.templates
    "template": templates.Template,  # a template (YAML in, JSON on the wire)
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """A self-contained JSON Schema (2020-12) per wire type."""
    found: dict[str, dict[str, Any]] = {}
    for name, type_ in WIRE_TYPES.items():
        (ref,), components = msgspec.json.schema_components([type_], ref_template="#/$defs/{name}")
        found[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": name,
            **ref,
            "$defs": components,
        }
    return found

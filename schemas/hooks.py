"""What an assistant's own hooks report, and how that ranks against its screen.

An assistant that has hooks says itself when it starts working, finishes, or asks a person,
which its screen shows only as a guess. Each agent's assistant runs `fleet hook` from the
hooks fleetd installs in the agent's own config dir (actors/agent/assistantconfig.py); `fleet hook`
sends a `HookCall` on `fleet.hook.<agent_id>` with the agent's own NATS user, and the agent's
actor reads it here into a `HookReport` (or refuses it with one sentence) before it records
anything. The payloads are the assistants' own, as they document them:

- Claude Code (2.1, settings.json `hooks`, the JSON on stdin, `hook_event_name`):
  SessionStart -> READY, UserPromptSubmit -> WORKING, Stop -> READY, Notification by its
  `notification_type`: permission_prompt and elicitation_dialog -> AWAITING_INPUT (its
  `message` the detail), idle_prompt -> READY.
- Gemini CLI (0.61, settings.json `hooks`, JSON on stdin): SessionStart -> READY,
  BeforeAgent -> WORKING, AfterAgent -> READY, Notification (ToolPermission) ->
  AWAITING_INPUT with its `message`.
- Codex (0.171, config.toml `notify = [...]`, the JSON as the last argument, `type`):
  agent-turn-complete -> READY.
- Aider (0.86, `--notifications-command`, no payload): it is waiting for the person, at its
  prompt or at a question; READY, which the screen may make AWAITING_INPUT (`refinable`).

Anything else a hook says (another event, a notification type we do not read) changes
nothing and is answered as ignored. Pure: no clock inside, `now` is passed in.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.errors import BadRequest
from schemas.states import Activity

A = Activity
HOOK_HOLD_S = 20.0  # a hook's word outranks the screen this long after it was said
DETAIL_MAX = 200
MAX_HOOK_BYTES = 16 * 1024  # a `HookCall` on the wire; `fleet hook` keeps only what is read
KEPT_FIELDS = ("hook_event_name", "notification_type", "message", "type", "source", "title")
ASSISTANTS = ("claude-code", "codex", "gemini", "aider")


class HookCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `fleet hook` sends on `fleet.hook.<agent_id>`: the assistant whose hook ran, the
    agent it speaks for (it must be the subject's), and the payload's fields we read."""

    assistant: str
    agent_id: str
    payload: dict[str, str] = {}


class HookReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a hook says of the agent's activity. `refinable`: screen activities that may
    replace it while it holds (Aider's one hook cannot tell its prompt from a question)."""

    activity: Activity
    detail: str = ""
    event: str = ""  # the assistant's own name for it ("Stop", "agent-turn-complete")
    refinable: frozenset[Activity] = frozenset()


_CLAUDE = {"SessionStart": A.READY, "UserPromptSubmit": A.WORKING, "Stop": A.READY}
_CLAUDE_NOTICE = {
    "permission_prompt": A.AWAITING_INPUT,
    "elicitation_dialog": A.AWAITING_INPUT,
    "idle_prompt": A.READY,
}
_GEMINI = {"SessionStart": A.READY, "BeforeAgent": A.WORKING, "AfterAgent": A.READY}
_CODEX = {"agent-turn-complete": A.READY}


def slim(payload: dict[str, Any]) -> dict[str, str]:
    """The fields of an assistant's payload that are read, as strings, each cut short: what
    `fleet hook` sends (Codex's and Claude's payloads carry whole messages, not needed)."""
    kept: dict[str, str] = {}
    for key in KEPT_FIELDS:
        value = payload.get(key)
        if isinstance(value, str):
            kept[key] = value[:DETAIL_MAX]
    return kept


def check_call(call: HookCall, agent_id: str) -> None:
    """A call on `fleet.hook.<agent_id>` speaks for that agent only, and names an assistant
    we install hooks for."""
    if call.agent_id != agent_id:
        raise BadRequest(
            f"a hook of agent {agent_id} cannot speak for agent {call.agent_id!r}",
            "hook_not_yours",
        )
    if call.assistant not in ASSISTANTS:
        raise BadRequest(
            f"hooks come from {', '.join(ASSISTANTS)}, not {call.assistant!r}", "unknown_assistant"
        )


def read(call: HookCall, profile: str) -> HookReport | None:
    """The activity a hook call reports for an agent of `profile` (its template's assistant),
    or None when the event is one we do not read. A call from another assistant than the
    agent's is refused: an agent runs one."""
    if call.assistant != profile:
        raise BadRequest(
            f"this agent runs {profile}, so a hook of {call.assistant} cannot speak for it",
            "hook_wrong_assistant",
        )
    p = call.payload
    name = p.get("hook_event_name", "")
    match call.assistant:
        case "claude-code":
            return _named(p, name, _CLAUDE, _CLAUDE_NOTICE, "notification_type")
        case "gemini":
            return _named(p, name, _GEMINI, None, "notification_type")
        case "codex":
            kind = p.get("type", "")
            if not kind:
                raise BadRequest('a Codex notify payload has no "type"', "invalid_hook")
            return HookReport(activity=_CODEX[kind], event=kind) if kind in _CODEX else None
        case _:  # aider: its notifications command carries nothing
            return HookReport(
                activity=A.READY, event="notification", refinable=frozenset({A.AWAITING_INPUT})
            )


def _named(
    p: dict[str, str],
    name: str,
    table: dict[str, Activity],
    notices: dict[str, Activity] | None,
    type_key: str,
) -> HookReport | None:
    if not name:
        raise BadRequest('a hook payload has no "hook_event_name"', "invalid_hook")
    if name in table:
        return HookReport(activity=table[name], event=name)
    if name != "Notification":
        return None
    kind = p.get(type_key, "")
    if notices is None:  # Gemini: its one notification is a tool's permission
        activity: Activity | None = A.AWAITING_INPUT
    else:
        activity = notices.get(kind)
    if activity is None:
        return None
    if activity is not A.AWAITING_INPUT:
        return HookReport(activity=activity, event=name)
    said = " ".join(p.get("message", "").split())[:DETAIL_MAX]
    return HookReport(activity=activity, detail=said or "a permission is asked", event=name)


class HookClaim(msgspec.Struct, frozen=True, kw_only=True):
    """The last activity a hook reported, and when (the monitor's clock)."""

    activity: Activity
    at: float
    refinable: frozenset[Activity] = frozenset()


def screen_may_record(
    claim: HookClaim | None,
    screen: Activity,
    *,
    first_run: bool,
    now: float,
    hold_s: float = HOOK_HOLD_S,
) -> bool:
    """Whether an activity read from the screen may be recorded over what a hook said.

    A hook outranks the screen for `hold_s` after it spoke: its READY, WORKING or
    AWAITING_INPUT stand while the screen shows something else, except a login
    (LOGIN_REQUIRED), a first-run dialog (`first_run`: a trust question, where no hook
    fires), or what the claim says the screen may refine it into. After that, or with no
    claim, the screen is read as before. (A dead pane is recorded whatever a hook said:
    that is not a screen reading.)"""
    if claim is None or screen is A.LOGIN_REQUIRED or first_run:
        return True
    if screen in claim.refinable:
        return True
    return now - claim.at >= hold_s or now < claim.at

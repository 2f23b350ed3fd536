"""An agent's screen profile (activity detection, how to quit), from the template it recorded.

Pure: the template's assistant profile with its overrides applied. It lives here, not with the
YAML template loader (infra/template_files.py), so an agent actor, which needs only this, does not
carry the loader.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.agent import AgentState
from schemas.assistants import AssistantProfile, with_patterns
from schemas.builtin_profiles import BUILTIN as PROFILES
from schemas.builtin_profiles import profile_for
from schemas.templates import Template, decode_spec


def profile_of(template: Template | None, name: str, command: str = "") -> AssistantProfile:
    """The screen profile for activity detection: the template's assistant profile with its
    overrides, or (an agent recorded before templates were kept) the profile named `name`."""
    if template is None:
        return profile_for(name, command or None)
    a = template.assistant
    profile = with_patterns(PROFILES[a.profile], dict(a.patterns))
    changes: dict[str, Any] = {"command": command or a.command}
    if a.quit_text is not None:
        changes["quit_text"] = a.quit_text
    if a.quit_keys is not None:
        changes["quit_keys"] = a.quit_keys
    if a.env:
        changes["env"] = {**profile.env, **a.env}
    return msgspec.structs.replace(profile, **changes)


def agent_profile(state: AgentState) -> AssistantProfile:
    """The screen profile of an agent, from the template its log recorded."""
    return profile_of(decode_spec(state.template_spec), state.template, state.command)

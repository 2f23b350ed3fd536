"""`fleet hook` from inside a real sandboxed agent, and a real Claude Code's own hooks.

The fleet runs with NATS users (each agent its own: tests/fleet/test_security_nats.py). The
agents run the claude-code template with a shell for a command (its screen profile and its
config dir are Claude's; its pane is a shell the test types into), so payloads as the
assistants document them are fed to `fleet hook` from the pane, with the pane's own NATS
credential. What a hook says is recorded as ActivityChanged with source "hook"; a call for
another agent, from another assistant, malformed or too big is refused with one sentence and
records nothing; the screen does not overrule the hook for `HOOK_HOLD_S`. Last, the real
Claude Code (offline, with a key that is not one) run in the pane fires its SessionStart and
UserPromptSubmit hooks from the settings fleetd installed in the agent's config dir.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
from nats.aio.client import Client

from infra import natsauth, sandbox_argv
from infra.eventstore import EventStore
from infra.nats import connect
from schemas import hooks, subjects
from schemas.events import ActivityChanged
from tests.fleet.helpers import spawn, until
from tests.fleet.test_security_nats import AuthFleet, auth_fleet, control, pane_env
from tests.security.pane import in_pane

if TYPE_CHECKING:
    from tests.assistants.install import Installs

__all__ = ["auth_fleet", "control"]
pytestmark = pytest.mark.skipif(
    not sandbox_argv.namespaces_work(), reason="bubblewrap cannot make namespaces on this machine"
)
GUARD_S = 120.0
SHELL = "bash --noprofile --norc -i"
HOOK = shlex.join([sys.executable, "-m", "services.cli", "hook"])


async def activity(nc: Client, agent_id: str, source: str = "") -> list[ActivityChanged]:
    """The agent's ActivityChanged events (of one source, if given)."""
    stored = await EventStore(nc).read(agent_id)
    found = [s.event for s in stored if isinstance(s.event, ActivityChanged)]
    return [e for e in found if e.source == source] if source else found


async def hook_events(nc: Client, agent_id: str) -> list[ActivityChanged]:
    return await activity(nc, agent_id, "hook")


async def fed(nc: Client, agent: str, worktree: str, line: str) -> str:
    """Run one `fleet hook` line in the agent's pane: its stderr (stdout must be empty and
    the status 0, whatever it said)."""
    ran = await in_pane(nc, agent, worktree, f"{line} 2>.hook-err; echo status=$?; cat .hook-err")
    out, _, err = ran.output.partition("status=")
    assert out == "", f"fleet hook printed on stdout: {out!r}"
    status, _, said = err.partition("\n")
    assert status == "0", ran.output
    return said.strip()


@pytest.mark.parametrize("auth_fleet", ["embedded"], indirect=True)
async def test_hooks_from_a_sandboxed_pane_are_checked_then_recorded(
    auth_fleet: AuthFleet, control: Client, repo: Path, assistants: Installs
) -> None:
    env = {"PATH": f"{assistants.npm_bin}:/usr/local/bin:/usr/bin:/bin"}
    for name in ("hk1", "hk2"):
        reply = await spawn(
            control, str(repo), name, template="claude-code", command=SHELL, env=env
        )
        assert reply["ok"], reply
    worktree = reply["agent"]["worktree"].replace("hk2", "hk1")
    pane = pane_env(auth_fleet.fleet, "fleet-hk1")
    assert pane["CLAUDE_CONFIG_DIR"].startswith(str(auth_fleet.fleet.state_dir / "homes" / "hk1"))

    # Claude Code's UserPromptSubmit (its JSON on stdin): WORKING, from the hook.
    prompt = json.dumps({"hook_event_name": "UserPromptSubmit", "prompt": "x" * 5000})
    said = await fed(control, "hk1", worktree, f"echo {shlex.quote(prompt)} | {HOOK} claude-code")
    assert said == "", said

    async def working() -> ActivityChanged | None:
        found = [e for e in await hook_events(control, "hk1") if e.to.value == "WORKING"]
        return found[0] if found else None

    first = await until(working, "the hook's WORKING in hk1's log", GUARD_S)
    assert first.source == "hook", first

    # Refused, each with one sentence, recording nothing: another agent, another assistant,
    # not JSON, no event name; and the subject of another agent is not this user's to use.
    before = len(await hook_events(control, "hk1")), len(await hook_events(control, "hk2"))
    stop = shlex.quote('{"hook_event_name": "Stop"}')
    refusals = {
        f"echo {stop} | {HOOK} claude-code --agent hk2": "cannot speak for agent 'hk2'",
        f'{HOOK} codex \'{{"type": "agent-turn-complete"}}\'': "runs claude-code",
        f"echo 'not json' | {HOOK} claude-code": "is not JSON",
        f"echo '{{}}' | {HOOK} claude-code": 'no "hook_event_name"',
        f"echo {stop} | FLEET_AGENT_ID=hk2 {HOOK} claude-code": "nothing was recorded",
    }
    for line, sentence in refusals.items():
        said = await fed(control, "hk1", worktree, line)
        assert sentence in said and said.count("\n") == 0, (line, said)
    assert (
        len(await hook_events(control, "hk1")),
        len(await hook_events(control, "hk2")),
    ) == before

    # With the agent's own credential, as any process of its pane has it: too big, unknown
    # fields, and a HookCall of the other agent on this agent's subject.
    cred = natsauth.read_credential(Path(pane["FLEET_NATS_CREDS"]))
    url = natsauth.with_credential(pane["FLEET_NATS_URL"], cred)
    nc = await connect(url, name="hk1-pane", reconnect=False, inbox_prefix=cred.inbox_prefix)
    try:
        big = {"assistant": "claude-code", "agent_id": "hk1", "payload": {"m": "x" * 20000}}
        for data, code in (
            (msgspec.json.encode(big), "payload_too_large"),
            (b'{"assistant": "claude-code", "agent_id": "hk1", "extra": 1}', "invalid_field"),
            (b'{"assistant": "claude-code", "agent_id": "hk2"}', "hook_not_yours"),
        ):
            msg = await nc.request(subjects.hook("hk1"), data, timeout=30)
            reply = json.loads(msg.data)
            assert reply["ok"] is False and reply["error"]["code"] == code, reply
    finally:
        await nc.close()
    assert len(await hook_events(control, "hk1")) == before[0]

    # A permission prompt: AWAITING_INPUT with its message as the detail.
    notice = {"hook_event_name": "Notification", "notification_type": "permission_prompt",
              "message": "Claude needs your permission to use Bash"}  # fmt: skip
    await fed(
        control, "hk1", worktree, f"echo {shlex.quote(json.dumps(notice))} | {HOOK} claude-code"
    )

    async def asking() -> ActivityChanged | None:
        found = [e for e in await hook_events(control, "hk1") if e.to.value == "AWAITING_INPUT"]
        return found[-1] if found else None

    asked = await until(asking, "the hook's AWAITING_INPUT in hk1's log", GUARD_S)
    assert asked.source == "hook" and asked.detail == notice["message"], asked

    # The shell's screen (nothing Claude's patterns know: READY once it stands still) is
    # recorded only after the hook's hold.
    async def screen_after() -> ActivityChanged | None:
        found = [e for e in await activity(control, "hk1") if e.at > asked.at]
        return found[0] if found else None

    later = await until(screen_after, "the screen's reading after the hook's hold", GUARD_S)
    assert later.source == "screen", later
    held = (later.at - asked.at).total_seconds()
    assert held >= hooks.HOOK_HOLD_S - 0.5, f"the screen overruled the hook after {held:.1f} s"


@pytest.mark.parametrize("auth_fleet", ["embedded"], indirect=True)
async def test_real_claude_codes_hooks_reach_the_actor(
    auth_fleet: AuthFleet, control: Client, repo: Path, assistants: Installs
) -> None:
    """Claude Code in print mode, offline with a key that is not one, runs its SessionStart
    and UserPromptSubmit hooks before it tries the network: from the agent's config dir."""
    env = {"PATH": f"{assistants.npm_bin}:/usr/local/bin:/usr/bin:/bin"}
    reply = await spawn(control, str(repo), "hk3", template="claude-code", command=SHELL, env=env)
    assert reply["ok"], reply
    worktree = reply["agent"]["worktree"]
    run = "ANTHROPIC_API_KEY=sk-ant-not-a-key ANTHROPIC_BASE_URL=http://127.0.0.1:9"
    run += " DISABLE_AUTOUPDATER=1 timeout 90 claude -p hello </dev/null >/dev/null 2>&1 &"
    await in_pane(control, "hk3", worktree, run)

    async def working() -> ActivityChanged | None:
        found = [e for e in await hook_events(control, "hk3") if e.to.value == "WORKING"]
        return found[0] if found else None

    event = await until(working, "Claude Code's UserPromptSubmit hook in hk3's log", GUARD_S)
    assert event.source == "hook", event

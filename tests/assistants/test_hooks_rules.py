"""The pure part of the assistants' hooks (schemas/hooks.py): each assistant's documented
payloads read into an activity, bad calls refused with a sentence, and the rule by which a
hook's word outranks the screen (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from schemas import hooks
from schemas.errors import BadRequest
from schemas.events import ActivityChanged
from schemas.hooks import HookCall, HookClaim, screen_may_record
from schemas.states import Activity

A = Activity


def call(assistant: str, **payload: str) -> HookCall:
    return HookCall(assistant=assistant, agent_id="a1", payload=payload)


@pytest.mark.parametrize(
    ("assistant", "payload", "activity", "detail"),
    [
        ("claude-code", {"hook_event_name": "SessionStart", "source": "startup"}, A.READY, ""),
        ("claude-code", {"hook_event_name": "UserPromptSubmit"}, A.WORKING, ""),
        ("claude-code", {"hook_event_name": "Stop"}, A.READY, ""),
        (
            "claude-code",
            {
                "hook_event_name": "Notification",
                "notification_type": "permission_prompt",
                "message": "Claude needs your permission to use Bash",
            },
            A.AWAITING_INPUT,
            "Claude needs your permission to use Bash",
        ),
        (
            "claude-code",
            {"hook_event_name": "Notification", "notification_type": "idle_prompt"},
            A.READY,
            "",
        ),
        ("gemini", {"hook_event_name": "BeforeAgent"}, A.WORKING, ""),
        ("gemini", {"hook_event_name": "AfterAgent"}, A.READY, ""),
        (
            "gemini",
            {
                "hook_event_name": "Notification",
                "notification_type": "ToolPermission",
                "message": "Allow execution of: 'rm'?",
            },
            A.AWAITING_INPUT,
            "Allow execution of: 'rm'?",
        ),
        ("codex", {"type": "agent-turn-complete"}, A.READY, ""),
        ("aider", {}, A.READY, ""),
    ],
)  # fmt: skip
def test_each_assistants_documented_payload_is_read(
    assistant: str, payload: dict[str, str], activity: Activity, detail: str
) -> None:
    report = hooks.read(call(assistant, **payload), assistant)
    assert report is not None and report.activity is activity and report.detail == detail


def test_events_we_do_not_read_change_nothing() -> None:
    assert hooks.read(call("claude-code", hook_event_name="PreToolUse"), "claude-code") is None
    unknown = call("claude-code", hook_event_name="Notification", notification_type="auth_x")
    assert hooks.read(unknown, "claude-code") is None
    assert hooks.read(call("codex", type="something-else"), "codex") is None


@pytest.mark.parametrize(
    ("the_call", "agent", "profile", "words"),
    [
        (HookCall(assistant="claude-code", agent_id="b2"), "a1", "claude-code", "agent 'b2'"),
        (HookCall(assistant="vim", agent_id="a1"), "a1", "claude-code", "not 'vim'"),
        (call("codex", type="agent-turn-complete"), "a1", "claude-code", "runs claude-code"),
        (call("claude-code"), "a1", "claude-code", "hook_event_name"),
        (call("codex"), "a1", "codex", '"type"'),
    ],
)  # fmt: skip
def test_a_bad_call_is_refused_with_one_sentence(
    the_call: HookCall, agent: str, profile: str, words: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        hooks.check_call(the_call, agent)
        hooks.read(the_call, profile)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_slim_keeps_only_the_fields_read_and_cuts_them_short() -> None:
    kept = hooks.slim({"hook_event_name": "Stop", "transcript": ["x"] * 9, "message": "m" * 999})
    assert set(kept) == {"hook_event_name", "message"} and len(kept["message"]) == 200


def test_old_activity_events_decode_as_read_from_the_screen() -> None:
    import msgspec

    old = (
        b'{"type":"activity.changed","agent_id":"a1","event_id":"e",'
        b'"at":"2026-01-01T00:00:00Z","to":"WORKING"}'
    )
    assert msgspec.json.decode(old, type=ActivityChanged).source == "screen"


activities = st.sampled_from(list(Activity))
claims = st.builds(
    HookClaim,
    activity=activities,
    at=st.floats(0, 1e6),
    refinable=st.frozensets(activities, max_size=2),
)


@given(claims, activities, st.booleans(), st.floats(0, 1e6))
def test_a_login_or_first_run_screen_always_passes(
    claim: HookClaim, screen: Activity, first_run: bool, now: float
) -> None:
    if screen is A.LOGIN_REQUIRED or first_run:
        assert screen_may_record(claim, screen, first_run=first_run, now=now)


@given(claims, activities, st.floats(0, hooks.HOOK_HOLD_S, exclude_max=True))
def test_within_the_hold_the_screen_does_not_override_a_hook(
    claim: HookClaim, screen: Activity, after: float
) -> None:
    allowed = screen is A.LOGIN_REQUIRED or screen in claim.refinable
    now = claim.at + after
    assume(now - claim.at < hooks.HOOK_HOLD_S)  # 13.0 + 19.999999999999996 is 33.0 in floats
    assert screen_may_record(claim, screen, first_run=False, now=now) is allowed


@given(claims, activities, st.floats(hooks.HOOK_HOLD_S, 1e6))
def test_after_the_hold_or_without_a_claim_the_screen_rules(
    claim: HookClaim, screen: Activity, after: float
) -> None:
    assert screen_may_record(claim, screen, first_run=False, now=claim.at + after)
    assert screen_may_record(None, screen, first_run=False, now=after)

"""Every captured screen of the real assistants is read as what it shows (pure, fast).

The captures (tests/assistants/screens/<assistant>-<version>-<what>.txt) are what `tmux
capture-pane -p -J` printed for Claude Code, Codex CLI, Gemini CLI, Aider and bash at 200x50,
run with a throwaway HOME, no login and no network beyond the package registries: the screens
a new user's first agent shows. Each file is named with the assistant and the version it came
from; the ones captured by hand also say so on a first line, the screen following `# ---`;
the `-first` ones are written by tests/assistants/test_start.py from an agent's sandboxed pane.
A new capture must be added to `EXPECTED`.
"""

# The screens hold the assistants' own glyphs (❯ ›), which look like ">" on purpose.
# ruff: noqa: RUF003

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.assistants import (
    WAITING,
    AssistantProfile,
    Debouncer,
    classify,
    detail,
    last_words,
    tail,
)
from schemas.builtin_profiles import BUILTIN
from schemas.states import Activity

A = Activity
SCREENS = Path(__file__).parent / "screens"
_HEADER = re.compile(r"# (?P<who>[a-z-]+) (?P<version>[\d.]+): (?P<what>[a-z-]+) \(")
_NAME = re.compile(r"(?P<who>[a-z]+(?:-code)?)-(?P<version>\d[\d.]*\d)-(?P<what>[a-z-]+)")

# file stem -> (activity, detail); None: nothing on it is recognised (a dead pane's last words)
EXPECTED: dict[str, tuple[A | None, str]] = {
    # Claude Code 2.1.197: without onboarding it exits at its network check; with it, the
    # trust dialog, then a prompt that says it is not logged in, /login's menu and code box.
    "claude-code-2.1.197-unable-to-connect": (None, ""),
    "claude-code-2.1.197-trust-dialog": (
        A.AWAITING_INPUT,
        "Quick safety check: Is this a project you created or one you trust?",
    ),
    "claude-code-2.1.197-not-logged-in": (A.LOGIN_REQUIRED, "Not logged in · Run /login"),
    "claude-code-2.1.197-typed-not-sent": (A.LOGIN_REQUIRED, "Not logged in · Run /login"),
    "claude-code-2.1.197-please-run-login": (
        A.LOGIN_REQUIRED,
        "Not logged in · Please run /login",
    ),
    "claude-code-2.1.197-login-menu": (A.LOGIN_REQUIRED, "Select login method:"),
    "claude-code-2.1.197-paste-code": (A.LOGIN_REQUIRED, "Paste code here if prompted"),
    # Claude Code 2.1.332 (the version tests/assistants/install.py pins): the trust dialog's
    # options lost their numbers and "No, exit" comes first; "Auto-updating…" under the status.
    "claude-code-2.1.332-unable-to-connect": (None, ""),
    "claude-code-2.1.332-trust-dialog": (
        A.AWAITING_INPUT,
        "Quick safety check: Is this a project you created or one you trust?",
    ),
    "claude-code-2.1.332-not-logged-in": (A.LOGIN_REQUIRED, "Not logged in · run /login"),
    "claude-code-2.1.332-login-menu": (A.LOGIN_REQUIRED, "Select login method:"),
    "claude-code-2.1.332-paste-code": (A.LOGIN_REQUIRED, "Paste code here if prompted"),
    # Codex 0.171.0: the sign-in menus (cursor ">" on any option), the API-key box, the trust
    # dialog (cursor "›", the composer's glyph), the picker Esc leads to, work, the composer.
    "codex-0.171.0-sign-in-menu": (A.LOGIN_REQUIRED, "Choose how you want to use Codex."),
    "codex-0.171.0-sign-in-menu-cursor-moved": (
        A.LOGIN_REQUIRED,
        "Choose how you want to use Codex.",
    ),
    "codex-0.171.0-sign-in-another-way": (A.LOGIN_REQUIRED, "Sign in another way"),
    "codex-0.171.0-api-key-entry": (A.LOGIN_REQUIRED, "Paste or type your API key"),
    "codex-0.171.0-trust-dialog": (A.AWAITING_INPUT, "Trust this folder?"),
    "codex-0.171.0-agent-command-center": (A.AWAITING_INPUT, "Agent command center"),
    "codex-0.171.0-ready-prompt": (A.READY, ""),
    "codex-0.171.0-working-reconnecting": (A.WORKING, ""),
    "codex-0.171.0-waiting-for-network": (A.WORKING, ""),
    # Gemini CLI 0.61.0: the trust dialog, the auth menu, the API-key box, work, the prompt.
    "gemini-0.61.0-trust-dialog": (A.AWAITING_INPUT, "Do you trust the files in this folder?"),
    "gemini-0.61.0-auth-menu": (
        A.LOGIN_REQUIRED,
        "How would you like to authenticate for this project?",
    ),
    "gemini-0.61.0-auth-menu-cursor-moved": (
        A.LOGIN_REQUIRED,
        "How would you like to authenticate for this project?",
    ),
    "gemini-0.61.0-api-key-entry": (A.LOGIN_REQUIRED, "Enter Gemini API Key"),
    "gemini-0.61.0-ready-prompt": (A.READY, ""),
    "gemini-0.61.0-spinner": (A.WORKING, ""),
    # Aider 0.86.2: first-run questions one after another (each answered one stays above the
    # next), the model's spinner and retries, a failed request followed by a new prompt.
    "aider-0.86.2-gitignore-question": (
        A.AWAITING_INPUT,
        "Add .aider* to .gitignore (recommended)? (Y)es/(N)o [Yes]:",
    ),
    "aider-0.86.2-openrouter-login": (
        A.LOGIN_REQUIRED,
        "Login to OpenRouter or create a free account? (Y)es/(N)o [Yes]:",
    ),
    "aider-0.86.2-openrouter-declined": (
        A.AWAITING_INPUT,
        "Open documentation URL for more info? (Y)es/(N)o/(D)on't ask again [Yes]:",
    ),
    "aider-0.86.2-exited-no-model": (None, ""),
    "aider-0.86.2-whats-new-question": (
        A.AWAITING_INPUT,
        "Would you like to see what's new in this version? (Y)es/(N)o [Yes]:",
    ),
    "aider-0.86.2-ready-prompt": (A.READY, ""),
    "aider-0.86.2-waiting-spinner": (A.WORKING, ""),
    "aider-0.86.2-retrying": (A.WORKING, ""),
    "aider-0.86.2-error-then-prompt": (A.READY, ""),
    # The first screens of agents spawned with the builtin templates, inside their sandbox.
    "claude-code-2.1.332-first": (None, ""),  # it exited at its network check
    "codex-0.171.0-first": (A.LOGIN_REQUIRED, "Choose how you want to use Codex."),
    "gemini-0.61.0-first": (A.AWAITING_INPUT, "Do you trust the files in this folder?"),
    "aider-0.86.2-first": (
        A.AWAITING_INPUT,
        "Add .aider* to .gitignore (recommended)? (Y)es/(N)o [Yes]:",
    ),
    # bash 5.2: a password, then a question under the answered password, then the prompt.
    "shell-5.2-password": (A.AWAITING_INPUT, "Password:"),
    "shell-5.2-password-answered-then-question": (A.AWAITING_INPUT, "Overwrite file (yes/no)?"),
    "shell-5.2-answered-then-prompt": (A.READY, ""),
}


def screen(stem: str) -> str:
    """The captured screen, its header (if any) left out."""
    text = (SCREENS / f"{stem}.txt").read_text(encoding="utf-8")
    return text.split("# ---\n", 1)[1] if _HEADER.match(text) else text


def profile(stem: str) -> AssistantProfile:
    name = _NAME.fullmatch(stem)
    assert name is not None, f"{stem}.txt is not named <assistant>-<version>-<what>.txt"
    return BUILTIN[name["who"]]


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_each_capture_reads_as_it_shows(stem: str) -> None:
    want, said = EXPECTED[stem]
    shown, mine = screen(stem), profile(stem)
    got = classify(shown, mine)
    assert got is want, f"{stem} read as {got}, not {want}"
    assert detail(shown, mine, got) == said


def test_every_capture_is_expected_and_says_its_version() -> None:
    stems = sorted(p.stem for p in SCREENS.glob("*.txt"))
    assert stems == sorted(EXPECTED), "every capture needs its expected reading here"
    for stem in stems:
        name = _NAME.fullmatch(stem)
        assert name is not None and name["who"] in BUILTIN, f"{stem}: <assistant>-<version>-<what>"
        head = _HEADER.match((SCREENS / f"{stem}.txt").read_text(encoding="utf-8"))
        if head is not None:  # one captured by hand says it again, the same way
            assert stem == f"{head['who']}-{head['version']}-{head['what']}", stem


@pytest.mark.parametrize(
    "stem",
    [
        "codex-0.171.0-trust-dialog",  # its menu cursor is the composer's "›"
        "claude-code-2.1.197-trust-dialog",  # "❯ 1. Yes, I trust this folder"
        "claude-code-2.1.197-not-logged-in",  # the input box, a line under the status line
        "claude-code-2.1.197-paste-code",  # the input box above the login's code box
        "claude-code-2.1.332-not-logged-in",
    ],
)
def test_a_dialog_drawn_over_a_prompt_is_not_ready(stem: str) -> None:
    """A READY pattern matches these screens too (a cursor, the input box drawn with a
    dialog): the dialog outranks it, which is what keeps a stop from typing into it."""
    text, mine = tail(screen(stem)), profile(stem)
    assert any(re.search(r, text, re.MULTILINE) for r in mine.patterns[A.READY.value])
    assert classify(screen(stem), mine) in WAITING


def test_a_detail_is_never_a_menu_option_or_two_questions() -> None:
    for stem, (activity, said) in EXPECTED.items():
        if activity in WAITING:
            assert not re.match(r"\d+\.", said), f"{stem}: {said!r} is a menu option"
            assert said.count("?") <= 1, f"{stem}: {said!r} joins questions"


def test_an_answer_being_typed_is_the_same_question() -> None:
    """Aider echoes the answer after "[Yes]:"; until Enter the question is the same one, so
    no new AWAITING_INPUT (and no second notification) is reported."""
    stem = "aider-0.86.2-gitignore-question"
    asked = screen(stem)
    typing = asked.rstrip("\n") + " y\n"
    aider = BUILTIN["aider"]
    assert classify(typing, aider) is A.AWAITING_INPUT
    assert detail(typing, aider, A.AWAITING_INPUT) == detail(asked, aider, A.AWAITING_INPUT)
    state = Debouncer(reported=A.AWAITING_INPUT, reported_detail=EXPECTED[stem][1], reported_at=0)
    for tick in range(1, 30):
        state, change = state.observe(
            A.AWAITING_INPUT, detail(typing, aider, A.AWAITING_INPUT), tick / 10
        )
        assert change is None


def test_a_dead_panes_last_words_say_why() -> None:
    words = last_words(screen("claude-code-2.1.197-unable-to-connect"))
    assert words.startswith("Unable to connect to Anthropic services / Failed to connect")
    assert "Pane is dead" not in words
    sandboxed = last_words(screen("claude-code-2.1.332-first"))  # 2.1.332, in an agent's pane
    assert sandboxed.startswith("Unable to connect to Anthropic services / Failed to connect")
    aider = last_words(screen("aider-0.86.2-exited-no-model"))
    assert "Open documentation URL for more info?" in aider


# -- an unrecognised screen: READY once it has stood still, never a stale question ----------


def test_an_unknown_still_screen_becomes_ready_after_the_settle_time() -> None:
    state = Debouncer(reported=A.LOGIN_REQUIRED, reported_detail="Select login method:")
    changes = []
    for tick in range(0, 50):
        now = tick / 10
        state, change = state.observe(None, "", now, still=True)
        if change is not None:
            changes.append((now, change, state.reported_detail))
    assert changes == [(state.unknown_s, A.READY, "")]


def test_an_unknown_screen_that_moves_is_no_evidence() -> None:
    state = Debouncer(reported=A.WORKING, reported_at=0.0)
    for tick in range(0, 100):
        state, change = state.observe(None, "", tick / 10, still=tick % 5 != 0)
        assert change is None, "output streaming at intervals is not READY"
    assert state.pending()


def test_a_recognised_screen_resets_the_unknown_clock() -> None:
    state = Debouncer(reported=A.AWAITING_INPUT, reported_detail="Proceed?", reported_at=0.0)
    state, _ = state.observe(None, "", 1.0)
    state, _ = state.observe(A.AWAITING_INPUT, "Proceed?", 2.0)
    state, change = state.observe(None, "", 4.5)
    assert change is None and state.unknown_since == 4.5
    _, change = state.observe(None, "", 4.5 + state.unknown_s)
    assert change is A.READY

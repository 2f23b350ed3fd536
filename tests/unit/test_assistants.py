"""Reading an assistant's activity from its screen, and debouncing what is read.

The screens are what `tmux capture-pane -p` prints for the real tools (trailing spaces gone),
written out as literal strings so a reader sees what each pattern is for.
"""

# The screens hold the assistants' own glyphs (❯ ›), which look like ">" on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

from collections.abc import Sequence

import pytest

from schemas.assistants import (
    DETAIL_MAX,
    AssistantProfile,
    Debouncer,
    classify,
    detail,
    tail,
    with_patterns,
)
from schemas.builtin_profiles import BUILTIN, profile_for
from schemas.errors import BadRequest, FleetError, UnknownTemplate
from schemas.states import Activity
from tests import fake_assistant

A = Activity
CLAUDE, CODEX, AIDER, GEMINI, SHELL = (
    BUILTIN[n] for n in ("claude-code", "codex", "aider", "gemini", "shell")
)

# -- Claude Code ------------------------------------------------------------------------------

CLAUDE_WORKING = """\
> fix the failing test in tests/test_parser.py

⏺ I'll look at the failing test first.

⏺ Read(tests/test_parser.py)
  ⎿  Read 42 lines (ctrl+r to expand)

✻ Pondering… (23s · ↓ 1.4k tokens · esc to interrupt)

╭──────────────────────────────────────────────────────────────────╮
│ >                                                                │
╰──────────────────────────────────────────────────────────────────╯
  ? for shortcuts
"""

CLAUDE_SPINNER_ONLY = """\
⏺ Update(src/parser.py)
  ⎿  Updated src/parser.py with 2 additions and 1 removal

✶ Cultivating…

────────────────────────────────────────────────────────────────────
❯
────────────────────────────────────────────────────────────────────
"""

CLAUDE_ASKS = """\
⏺ Bash(rm -rf build && make)

╭───────────────────────────────────────────────────────────────────╮
│ Bash command                                                      │
│                                                                   │
│   rm -rf build && make                                            │
│   Clean and rebuild the project                                   │
│                                                                   │
│ Do you want to proceed?                                           │
│ ❯ 1. Yes                                                          │
│   2. Yes, and don't ask again for make commands in /home/u/repo   │
│   3. No, and tell Claude what to do differently (esc)             │
╰───────────────────────────────────────────────────────────────────╯
"""

CLAUDE_ASKS_EDIT = """\
╭───────────────────────────────────────────────────────────────────╮
│ Edit file                                                         │
│ ╭───────────────────────────────────────────────────────────────╮ │
│ │ src/parser.py                                                 │ │
│ │  12 -    end = len(tokens) - 1                                │ │
│ │  12 +    end = len(tokens)                                    │ │
│ ╰───────────────────────────────────────────────────────────────╯ │
│ Do you want to make this edit to parser.py?                       │
│   1. Yes                                                          │
│ ❯ 2. Yes, allow all edits during this session (shift+tab)         │
│   3. No, and tell Claude what to do differently (esc)             │
╰───────────────────────────────────────────────────────────────────╯
"""

CLAUDE_LOGIN = """\
 Claude Code can be used with your Claude subscription or billed based on API usage through
 your Console account.

 Select login method:

 ❯ 1. Claude account with subscription · Pro, Max, Team, or Enterprise

   2. Anthropic Console account · API usage billing
"""

CLAUDE_BAD_KEY = """\
> hello
  ⎿  Invalid API key · Please run /login

╭──────────────────────────────────────────────────────────────────╮
│ >                                                                │
╰──────────────────────────────────────────────────────────────────╯
  ? for shortcuts
"""

CLAUDE_LOGGED_IN_SINCE = """\
> hello
  ⎿  Invalid API key · Please run /login

> /login
  ⎿  Login successful

> hello
⏺ Hello! What would you like to work on?

╭──────────────────────────────────────────────────────────────────╮
│ >                                                                │
╰──────────────────────────────────────────────────────────────────╯
  ? for shortcuts
"""

CLAUDE_READY = """\
⏺ All 42 tests pass now. The off-by-one was in the tokenizer's end index.

✻ Worked for 1m 12s

────────────────────────────────────────────────────────────────────
❯
────────────────────────────────────────────────────────────────────
  ⏵⏵ accept edits on (shift+tab to cycle)
"""

# -- Codex ------------------------------------------------------------------------------------

CODEX_WORKING = """\
› run the tests and fix what fails

• Ran pytest -q
  └ 3 failed, 39 passed in 2.10s

• Working (14s • esc to interrupt)

› Summarize recent commits

  ⏎ send   ⌃J newline   ⌃T transcript   ⌃C quit
"""

CODEX_ASKS = """\
  Would you like to run the following command?

  Reason: pytest needs network access to download fixtures

  $ pytest -q tests/test_net.py

› 1. Yes, proceed (y)
  2. Yes, and don't ask again for this command (a)
  3. No, and tell Codex what to do differently (esc)

  Press enter to confirm or esc to cancel
"""

CODEX_ASKS_EDITS = """\
  Would you like to make the following edits?

  src/parser.py (+1 -1)
    12 -    end = len(tokens) - 1
    12 +    end = len(tokens)

› 1. Yes, proceed (y)
  2. No, and tell Codex what to do differently (esc)

  Press enter to confirm or esc to cancel
"""

CODEX_LOGIN = """\
  >_ Welcome to Codex, OpenAI's command-line coding agent

  Sign in with ChatGPT to use Codex as part of your paid plan
  or connect an API key for usage-based billing

> 1. Sign in with ChatGPT
     Usage included with Plus, Pro, Team, and Enterprise plans

  2. Provide your own API key
     Pay for what you use

  Press Enter to continue
"""

CODEX_READY = """\
• Fixed the three failures in tests/test_parser.py; all 42 tests pass.

› Improve documentation in @filename

  100% context left · ? for shortcuts
"""

# -- Aider ------------------------------------------------------------------------------------

AIDER_WORKING = """\
Aider v0.86.2
Main model: anthropic/claude-sonnet-4 with diff edit format
Git repo: .git with 12 files
Repo-map: using 4096 tokens, auto refresh
────────────────────────────────────────────────────────────────────
> fix the failing test

░█░░░░ Waiting for anthropic/claude-sonnet-4
"""

AIDER_ASKS = """\
> fix the failing test

To fix this I need to edit src/parser.py.
Tokens: 3.2k sent, 120 received. Cost: $0.01 message, $0.01 session.
src/parser.py
Add file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]:
"""

AIDER_ANSWERED_STREAMING = """\
src/parser.py
Add file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]: y
Here is the fix for the off-by-one error in the tokenizer:
"""

AIDER_READY = """\
Tokens: 3.2k sent, 310 received. Cost: $0.02 message, $0.03 session.
Applied edit to src/parser.py
Commit 1a2b3c4 fix: off-by-one in the tokenizer
────────────────────────────────────────────────────────────────────
>
"""

AIDER_LOGIN = """\
No LLM model was specified and no API keys were provided.
OpenRouter provides free and paid access to many LLMs.
Login to OpenRouter or create a free account? (Y)es/(N)o [Yes]:
"""

AIDER_MISSING_KEY = """\
Warning for gpt-4o: Missing these environment variables:
- OPENAI_API_KEY
You can skip this check with --no-show-model-warnings

https://aider.chat/docs/llms/warnings.html
Open documentation url for more info? (Y)es/(N)o/(D)on't ask again [Yes]:
"""

# -- Gemini CLI -------------------------------------------------------------------------------

GEMINI_WORKING = """\
╭────────────────────────────────────────────────────────────────╮
│ > fix the failing test                                         │
╰────────────────────────────────────────────────────────────────╯

⠴ Refining the test fix (esc to cancel, 50s)

╭────────────────────────────────────────────────────────────────╮
│ >   Type your message or @path/to/file                         │
╰────────────────────────────────────────────────────────────────╯
~/repo (main*)        no sandbox (see /docs)        gemini-2.5-pro (98% context left)
"""

GEMINI_ASKS = """\
╭────────────────────────────────────────────────────────────────╮
│ ?  Shell pytest -q (Run the tests)                             │
│                                                                │
│   pytest -q                                                    │
│                                                                │
│ Allow execution of: 'pytest'?                                  │
│                                                                │
│ ● 1. Yes, allow once                                           │
│   2. Yes, allow always ...                                     │
│   3. No, suggest changes (esc)                                 │
╰────────────────────────────────────────────────────────────────╯

⠏ Waiting for user confirmation...
"""

GEMINI_LOGIN = """\
╭────────────────────────────────────────────────────────────────╮
│                                                                │
│ ? Get started                                                  │
│                                                                │
│   How would you like to authenticate for this project?         │
│                                                                │
│   ● 1. Login with Google                                       │
│     2. Use Gemini API Key                                      │
│     3. Vertex AI                                               │
│                                                                │
│   (Use Enter to select)                                        │
╰────────────────────────────────────────────────────────────────╯
"""

GEMINI_READY = """\
✦ The three failures came from an off-by-one in the tokenizer; all tests pass now.

╭────────────────────────────────────────────────────────────────╮
│ >   Type your message or @path/to/file                         │
╰────────────────────────────────────────────────────────────────╯
~/repo (main*)        no sandbox (see /docs)        gemini-2.5-pro (97% context left)
"""

# -- a shell ----------------------------------------------------------------------------------

SHELL_READY = "bash-5.2$ ls\nREADME.md  src  tests\nbash-5.2$\n"
SHELL_ROOT_READY = "root@box:~# apt-get update\nReading package lists... Done\nroot@box:~#\n"
SHELL_WORKING = "bash-5.2$ make\ncc -O2 -c main.c -o main.o\ncc -O2 -c util.c -o util.o\n"
SHELL_SUDO = "bash-5.2$ sudo apt-get upgrade\n[sudo] password for dev:\n"
SHELL_APT = "Need to get 42.1 MB of archives.\nDo you want to continue? [Y/n]\n"
SHELL_SSH = (
    "The authenticity of host 'build (10.0.0.7)' can't be established.\n"
    "Are you sure you want to continue connecting (yes/no/[fingerprint])?\n"
)


@pytest.mark.parametrize(
    ("profile", "screen", "activity"),
    [
        (CLAUDE, CLAUDE_WORKING, A.WORKING),
        (CLAUDE, CLAUDE_SPINNER_ONLY, A.WORKING),
        (CLAUDE, CLAUDE_ASKS, A.AWAITING_INPUT),
        (CLAUDE, CLAUDE_ASKS_EDIT, A.AWAITING_INPUT),
        (CLAUDE, CLAUDE_LOGIN, A.LOGIN_REQUIRED),
        (CLAUDE, CLAUDE_BAD_KEY, A.LOGIN_REQUIRED),
        (CLAUDE, CLAUDE_LOGGED_IN_SINCE, A.READY),
        (CLAUDE, CLAUDE_READY, A.READY),
        (CODEX, CODEX_WORKING, A.WORKING),
        (CODEX, CODEX_ASKS, A.AWAITING_INPUT),
        (CODEX, CODEX_ASKS_EDITS, A.AWAITING_INPUT),
        (CODEX, CODEX_LOGIN, A.LOGIN_REQUIRED),
        (CODEX, CODEX_READY, A.READY),
        (AIDER, AIDER_WORKING, A.WORKING),
        (AIDER, AIDER_ASKS, A.AWAITING_INPUT),
        (AIDER, AIDER_READY, A.READY),
        (AIDER, AIDER_LOGIN, A.LOGIN_REQUIRED),
        (AIDER, AIDER_MISSING_KEY, A.LOGIN_REQUIRED),
        (GEMINI, GEMINI_WORKING, A.WORKING),
        (GEMINI, GEMINI_ASKS, A.AWAITING_INPUT),
        (GEMINI, GEMINI_LOGIN, A.LOGIN_REQUIRED),
        (GEMINI, GEMINI_READY, A.READY),
        (SHELL, SHELL_READY, A.READY),
        (SHELL, SHELL_ROOT_READY, A.READY),
        (SHELL, SHELL_WORKING, A.WORKING),
        (SHELL, SHELL_SUDO, A.AWAITING_INPUT),
        (SHELL, SHELL_APT, A.AWAITING_INPUT),
        (SHELL, SHELL_SSH, A.AWAITING_INPUT),
    ],
)
def test_classify_real_screens(profile: AssistantProfile, screen: str, activity: A) -> None:
    assert classify(screen, profile) is activity


@pytest.mark.parametrize(
    ("profile", "screen"),
    [
        (AIDER, AIDER_ANSWERED_STREAMING),  # an answered question is history, not a question
        (SHELL, ""),
        (SHELL, "\n\n   \n"),
        (CLAUDE, "some unrelated output\n"),
    ],
)
def test_nothing_recognisable_is_unknown(profile: AssistantProfile, screen: str) -> None:
    assert classify(screen, profile) is None


def test_only_the_last_lines_count() -> None:
    """A question that scrolled far up is over: the prompt below it is what is live now."""
    old = "Do you want to proceed?\n" + "\n".join(f"line {n}" for n in range(20)) + "\n"
    assert classify(old + CLAUDE_READY, CLAUDE) is A.READY
    assert tail("a\n\n  \nb\n", lines=1) == "b"


def test_escapes_are_ignored() -> None:
    screen = "\x1b[1m✻ Thinking…\x1b[0m (3s · \x1b[2mesc to interrupt\x1b[0m)\n"
    assert classify(screen, CLAUDE) is A.WORKING


@pytest.mark.parametrize(
    ("profile", "screen", "activity", "expected"),
    [
        (CLAUDE, CLAUDE_ASKS, A.AWAITING_INPUT, "Do you want to proceed?"),
        (CLAUDE, CLAUDE_ASKS_EDIT, A.AWAITING_INPUT, "Do you want to make this edit to parser.py?"),
        (CLAUDE, CLAUDE_LOGIN, A.LOGIN_REQUIRED, "Select login method:"),
        (CLAUDE, CLAUDE_BAD_KEY, A.LOGIN_REQUIRED, "Invalid API key · Please run /login"),
        (CODEX, CODEX_ASKS, A.AWAITING_INPUT, "Would you like to run the following command?"),
        (
            AIDER,
            AIDER_ASKS,
            A.AWAITING_INPUT,
            "Add file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]:",
        ),
        (GEMINI, GEMINI_ASKS, A.AWAITING_INPUT, "Allow execution of: 'pytest'?"),
        (
            GEMINI,
            GEMINI_LOGIN,
            A.LOGIN_REQUIRED,
            "How would you like to authenticate for this project?",
        ),
        (SHELL, SHELL_SUDO, A.AWAITING_INPUT, "[sudo] password for dev:"),
    ],
)
def test_detail_is_the_question(
    profile: AssistantProfile, screen: str, activity: A, expected: str
) -> None:
    assert detail(screen, profile, activity) == expected


def test_detail_is_empty_unless_waiting() -> None:
    assert detail(CLAUDE_WORKING, CLAUDE, A.WORKING) == ""
    assert detail(CLAUDE_READY, CLAUDE, A.READY) == ""
    assert detail(CLAUDE_READY, CLAUDE, None) == ""


def test_detail_ignores_the_menu_cursor() -> None:
    moved = CLAUDE_ASKS.replace("│ ❯ 1. Yes", "│   1. Yes").replace("│   2.", "│ ❯ 2.")
    assert detail(moved, CLAUDE, A.AWAITING_INPUT) == detail(CLAUDE_ASKS, CLAUDE, A.AWAITING_INPUT)


def test_detail_is_trimmed() -> None:
    screen = f"Run {'x' * 500}? (Y)es/(N)o [Yes]:\n"
    said = detail(screen, AIDER, A.AWAITING_INPUT)
    assert len(said) == DETAIL_MAX
    assert said.startswith("Run xxx") and said.endswith("…")


# -- the fake assistant's screens read as the real ones --------------------------------------


@pytest.mark.parametrize("who", sorted(fake_assistant.LOOKS))
def test_fake_assistant_screens_classify(who: str) -> None:
    look = fake_assistant.LOOKS[who]
    profile = BUILTIN[fake_assistant.PROFILES[who]]
    for frame in range(8):
        assert classify("\n".join(look.spinner(frame, frame / 3)), profile) is A.WORKING
    assert classify("\n".join(look.question), profile) is A.AWAITING_INPUT
    assert classify("\n".join(look.login), profile) is A.LOGIN_REQUIRED
    assert classify("\n".join(look.prompt), profile) is A.READY
    asked = detail("\n".join(look.question), profile, A.AWAITING_INPUT)
    assert asked.endswith(":" if who == "aider" else "?")


# -- profiles ---------------------------------------------------------------------------------


def test_builtin_profiles() -> None:
    assert sorted(BUILTIN) == ["aider", "claude-code", "codex", "gemini", "shell"]
    for name, profile in BUILTIN.items():
        assert profile.name == name and profile.command and profile.quit_text
        assert set(profile.patterns) == {a.value for a in Activity}
    assert (CLAUDE.quit_text, CODEX.quit_text, AIDER.quit_text, GEMINI.quit_text) == (
        "/exit",
        "/quit",
        "/exit",
        "/quit",
    )


def test_profile_for_builtin_and_custom_command() -> None:
    assert profile_for("claude-code") is CLAUDE
    custom = profile_for("claude-code", "claude --model opus")
    assert custom.command == "claude --model opus"
    assert (custom.patterns, custom.quit_text, custom.quit_keys) == (
        CLAUDE.patterns,
        CLAUDE.quit_text,
        CLAUDE.quit_keys,
    )


def test_unknown_template_names_the_known_ones() -> None:
    with pytest.raises(UnknownTemplate) as info:
        profile_for("cursor")
    err = info.value
    assert isinstance(err, FleetError)
    assert err.code == "unknown_template"
    assert str(err) == (
        "there is no template 'cursor'; the known ones are aider, claude-code, codex, gemini "
        "and shell"
    )


def test_with_patterns_replaces_one_activity() -> None:
    mine = with_patterns(SHELL, {"VALIDATING": (r"^Running tests",)})
    assert classify("bash-5.2$ make test\nRunning tests...\n", mine) is A.VALIDATING
    assert mine.patterns["READY"] == SHELL.patterns["READY"]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"READY": ("([",)}, "is not a valid regex"),
        ({"IDLE": ("x",)}, "unknown activity 'IDLE'"),
    ],
)
def test_with_patterns_refuses_bad_ones(overrides: dict[str, tuple[str, ...]], words: str) -> None:
    with pytest.raises(BadRequest) as info:
        with_patterns(SHELL, overrides)
    assert words in str(info.value)
    assert info.value.code == "invalid_pattern"


# -- the debouncer ----------------------------------------------------------------------------

Step = tuple[float, A | None, str]  # (now, classification, detail)


def feed(debouncer: Debouncer, steps: Sequence[Step]) -> tuple[Debouncer, list[tuple[float, A]]]:
    """Run classifications through the debouncer; the changes it reported, with their time."""
    changes = []
    for now, activity, said in steps:
        debouncer, change = debouncer.observe(activity, said, now)
        if change is not None:
            changes.append((now, change))
    return debouncer, changes


def ticks(start: float, end: float, activity: A | None, said: str = "") -> list[Step]:
    """The same classification every 0.1 s from `start` to `end`, both included."""
    n = round((end - start) * 10)
    return [(round(start + i / 10, 6), activity, said) for i in range(n + 1)]


def test_flicker_is_suppressed() -> None:
    steps = [(t / 10, A.WORKING if t % 4 < 2 else A.READY, "") for t in range(60)]
    _, changes = feed(Debouncer(reported=A.READY), steps)
    assert changes == []


def test_stable_change_is_reported_once_settled() -> None:
    debouncer, changes = feed(Debouncer(reported=A.READY), ticks(0.0, 2.0, A.WORKING))
    assert changes == [(0.5, A.WORKING)]
    assert debouncer.reported is A.WORKING and debouncer.reported_at == 0.5


def test_changes_are_spaced_by_the_minimum_interval() -> None:
    steps = ticks(0.0, 0.5, A.WORKING) + ticks(0.6, 2.0, A.READY)
    _, changes = feed(Debouncer(reported=A.READY), steps)
    assert changes == [(0.5, A.WORKING), (1.5, A.READY)]  # READY settled at 1.1, held to 1.5


def test_waiting_is_reported_after_settle_only() -> None:
    steps = ticks(0.0, 0.5, A.WORKING) + ticks(0.6, 1.5, A.AWAITING_INPUT, "Proceed?")
    debouncer, changes = feed(Debouncer(reported=A.READY), steps)
    assert changes == [(0.5, A.WORKING), (1.1, A.AWAITING_INPUT)]
    assert debouncer.reported_detail == "Proceed?"


def test_a_new_question_while_waiting_is_a_change() -> None:
    start = Debouncer(reported=A.AWAITING_INPUT, reported_detail="Proceed?", reported_at=0.0)
    debouncer, changes = feed(start, ticks(0.1, 1.0, A.AWAITING_INPUT, "Overwrite x.py?"))
    assert changes == [(0.6, A.AWAITING_INPUT)]
    assert debouncer.reported_detail == "Overwrite x.py?"


def test_detail_of_other_activities_does_not_matter() -> None:
    start = Debouncer(reported=A.WORKING, reported_at=0.0)
    _, changes = feed(start, ticks(0.1, 2.0, A.WORKING, "12s"))
    assert changes == []


def test_unknown_screens_neither_report_nor_reset() -> None:
    steps = [(0.0, A.WORKING, ""), (0.2, None, ""), (0.4, None, ""), (0.6, A.WORKING, "")]
    _, changes = feed(Debouncer(reported=A.READY), steps)
    assert changes == [(0.6, A.WORKING)]


def test_going_back_to_the_reported_activity_cancels_the_candidate() -> None:
    steps = [(0.0, A.WORKING, ""), (0.3, A.READY, ""), (0.6, A.WORKING, ""), (0.9, A.WORKING, "")]
    debouncer, changes = feed(Debouncer(reported=A.READY), steps)
    assert changes == []  # WORKING restarted its settle at 0.6
    assert debouncer.candidate is A.WORKING and debouncer.candidate_since == 0.6


def test_first_observation_without_a_seed_is_reported_after_settle() -> None:
    _, changes = feed(Debouncer(), ticks(10.0, 11.0, A.READY))
    assert changes == [(10.5, A.READY)]


def test_seeded_activity_is_not_reported_again() -> None:
    _, changes = feed(Debouncer(reported=A.READY), ticks(0.0, 3.0, A.READY))
    assert changes == []

"""What each AI assistant looks like on screen, and reading its activity from a capture.

An assistant's activity is read from the bottom of its tmux pane, as a person glancing at it
would: the last `TAIL_LINES` non-blank lines are matched against the profile's regexes. The
patterns come from the assistants' own sources and from tools that watch them (references in
the comments); a template may override them.

Pattern semantics, so an override can rely on them: each regex is searched in the tail (the
lines joined with "\\n", trailing spaces removed, as `tmux capture-pane` prints them) with
`re.MULTILINE`, so `^`/`$` are line anchors and `\\A`/`\\Z` are the ends of the tail. The
first activity in `CHECK_ORDER` with a match wins: a login screen outranks a question, a
question outranks a spinner, a spinner outranks the input box that full-screen assistants
keep drawn while they work. Line-oriented tools (Aider, a shell) keep old output on screen,
so their patterns are anchored near the end (`\\Z`) and an answered question does not count.

Pure: no clock inside. `Debouncer` takes `now` so a flickering screen is judged in tests
without sleeping.
"""

# The patterns hold the assistants' own glyphs (❯ ›), which look like ">" on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import functools
import re

import msgspec
from msgspec.structs import replace

from schemas.errors import BadRequest, UnknownTemplate
from schemas.states import Activity

A = Activity
TAIL_LINES = 15
DETAIL_MAX = 200
CHECK_ORDER = (A.LOGIN_REQUIRED, A.AWAITING_INPUT, A.VALIDATING, A.WORKING, A.READY)
WAITING = frozenset({A.AWAITING_INPUT, A.LOGIN_REQUIRED})  # a person must be told

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_BORDER = "│┃|╭╮╰╯─━ \t\xa0"


class AssistantProfile(msgspec.Struct, frozen=True, kw_only=True):
    """How to run, read and quit one assistant.

    `quit_text` is typed (then Enter) to ask politely; `quit_keys` are the keys that end it
    when the polite way was not heard (a busy assistant, a foreground command in a shell),
    so a stop tries the text first, then the keys, then signals.
    """

    name: str
    command: str
    quit_text: str
    quit_keys: tuple[str, ...] = ()
    patterns: dict[str, tuple[str, ...]] = {}  # Activity value -> regexes (see module doc)
    env: dict[str, str] = {}


def _patterns(
    login: tuple[str, ...] = (),
    waiting: tuple[str, ...] = (),
    working: tuple[str, ...] = (),
    ready: tuple[str, ...] = (),
    validating: tuple[str, ...] = (),
) -> dict[str, tuple[str, ...]]:
    return {
        A.LOGIN_REQUIRED.value: login,
        A.AWAITING_INPUT.value: waiting,
        A.VALIDATING.value: validating,
        A.WORKING.value: working,
        A.READY.value: ready,
    }


# bash without rc files: its prompt is predictable ("bash-5.2$ "). Working = the screen does
# not end at a prompt; waiting = a password or yes/no question is the last line.
SHELL = AssistantProfile(
    name="shell",
    command="bash --noprofile --norc -i",
    quit_text="exit",
    # Ctrl-D at an empty prompt. Not Ctrl-C first: readline drops the keys typed after it.
    quit_keys=("C-d",),
    patterns=_patterns(
        waiting=(
            r"(?i)(password|passphrase)[^\n]*:\Z",
            r"(?i)\[y/n\]\s*\??:?\Z",
            r"(?i)\(yes/no(/\[fingerprint\])?\)\?\Z",
        ),
        working=(r"[^$#]\Z",),
        ready=(r"[$#]\Z",),
    ),
)

# Claude Code (Ink TUI). Spinner "✻ Thinking… (12s · ↑ 1.2k tokens · esc to interrupt)",
# glyphs · ✢ * ✶ ✻ ✽ ✳ (agent-deck internal/tmux/patterns.go, cli-agent-orchestrator
# providers/claude_code.py); permission dialogs "Do you want to proceed?" over "❯ 1. Yes" and
# "No, and tell Claude what to do differently (esc)" (claude-squad); login: "Select login
# method:", "Invalid API key · Please run /login". Ready: the "> " / "❯ " input box.
CLAUDE_CODE = AssistantProfile(
    name="claude-code",
    command="claude",
    quit_text="/exit",
    quit_keys=("C-c", "C-c"),  # "Press Ctrl-C again to exit"
    patterns=_patterns(
        login=(
            r"Select login method",
            r"Claude account with subscription",
            r"Paste code here if prompted",
            r"OAuth token has expired",
            # printed as a reply; it counts while it is the last thing above the input box
            r"(Invalid API key|Please run /login|Missing API key)[^\n]*(\n[^\n]*){0,5}\Z",
        ),
        waiting=(
            r"(Do|Would) you (want|like) to (proceed|make this edit|create|overwrite|allow)",
            r"Do you trust the files in this folder\?",
            r"No, and tell Claude what to do differently",
            r"(?m)^[\s│]*❯\s*1\.\s*Yes\b",
            r"Enter to confirm · Esc to (cancel|exit)",
        ),
        working=(
            r"esc to interrupt",
            r"ctrl\+c to interrupt",
            r"(?m)^\s*[·✢*✶✻✽✳]\s+\w+ing\b[^\n]*…",
        ),
        ready=(r"(?m)^[\s│]*[>❯](\s|$)", r"\? for shortcuts"),
    ),
)

# Codex CLI (ratatui TUI, codex-rs/tui): status "• Working (3s • esc to interrupt)";
# approvals "Would you like to run the following command?" / "...make the following edits?"
# with "Yes, proceed" and "Press enter to confirm or esc to cancel" (bottom_pane/
# approval_overlay.rs; the older TypeScript CLI asked "Allow command?"); login "Sign in with
# ChatGPT" / "Provide your own API key" (onboarding/auth.rs); ready: the "›" composer.
CODEX = AssistantProfile(
    name="codex",
    command="codex",
    quit_text="/quit",
    quit_keys=("C-c", "C-c"),  # "ctrl + c again to quit"
    patterns=_patterns(
        login=(
            r"Sign in with ChatGPT",
            r"Provide your own API key",
            r"Finish signing in via your browser",
            r"Paste or type your API key",
        ),
        waiting=(
            r"Would you like to (run the following command|make the following edits)\?",
            r"Allow command\?",
            r"Yes, proceed",
            r"Press enter to confirm or esc to cancel",
            r"needs your approval",
            r"allow Codex to work in this folder|Do you trust the contents of this directory",
        ),
        working=(r"esc to interrupt", r"(?i)ctrl\s*\+?\s*c to interrupt"),
        ready=(r"(?m)^\s*[›▌](\s|$)", r"\? for shortcuts", r"context left", r"⏎ send"),
    ),
)

# Aider (prompt_toolkit, line oriented): questions end "(Y)es/(N)o ... [Yes]: " on the last
# line (aider io.confirm_ask; claude-squad matches "(Y)es/(N)o/(D)on't ask again"); while the
# model thinks a spinner "Waiting for <model>" is the last line (aider/waiting.py); login is
# the OpenRouter onboarding or missing keys; ready: "> " or "<mode>> " (ask>, architect>, ...).
AIDER = AssistantProfile(
    name="aider",
    command="aider",
    quit_text="/exit",
    quit_keys=("C-c", "C-c"),  # "^C again to exit"
    patterns=_patterns(
        login=(
            r"Login to OpenRouter or create a free account\?[^\n]*\Z",
            r"finish in the browser[^\n]*(\n[^\n]*){0,2}\Z",
            r"Missing these environment variables:(\n[^\n]*){0,8}\Z",
            r"AuthenticationError[^\n]*(\n[^\n]*){0,3}\Z",
        ),
        waiting=(r"\(Y\)es/\(N\)o[^\n]*\Z",),
        working=(
            r"(?m)^\W*Waiting for \S+[^\n]*\Z",
            r"(?m)^\W*(Updating repo map|Scanning repo)[^\n]*\Z",
        ),
        ready=(r"(?m)^(?:[a-z][\w-]*(?: multi)?|multi)?>(?: [^\n]*)?\Z",),
    ),
)

# Gemini CLI (Ink TUI, packages/cli): spinner "⠴ Refining the plan (esc to cancel, 50s)";
# confirmations "Allow execution of: 'rm'?", "Apply this change?", "Yes, allow once"
# (components/messages/ToolConfirmationMessage.tsx) and "Waiting for user confirmation";
# login "How would you like to authenticate for this project?" (ui/auth/AuthDialog.tsx),
# "Waiting for auth..."; ready: the input box "> Type your message or @path/to/file".
GEMINI = AssistantProfile(
    name="gemini",
    command="gemini",
    quit_text="/quit",
    quit_keys=("C-c", "C-c"),  # "Press Ctrl+C again to exit"
    patterns=_patterns(
        login=(
            r"How would you like to authenticate for this project\?",
            r"Waiting for auth",
            r"GEMINI_API_KEY[^\n]*not (found|set)|must specify the GEMINI_API_KEY",
        ),
        waiting=(
            r"Allow execution of",
            r"Apply this change\?",
            r"Waiting for user confirmation",
            r"Yes, allow once",
            r"Do you want to proceed\?",
            r"Do you trust this folder\?",
        ),
        working=(r"esc to cancel", r"(?m)^\W*[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]\s"),
        ready=(r"Type your message", r"(?m)^[\s│]*>(\s|$)"),
    ),
)

BUILTIN: dict[str, AssistantProfile] = {
    p.name: p for p in (SHELL, CLAUDE_CODE, CODEX, AIDER, GEMINI)
}


def profile_for(template: str, command: str | None = None) -> AssistantProfile:
    """The built-in profile of a template; a custom `command` replaces only the command line."""
    try:
        profile = BUILTIN[template]
    except KeyError:
        raise UnknownTemplate(template, sorted(BUILTIN)) from None
    return replace(profile, command=command) if command else profile


def with_patterns(
    profile: AssistantProfile, overrides: dict[str, tuple[str, ...]]
) -> AssistantProfile:
    """A profile whose patterns for the given activities are replaced (a template's override).

    Checked here, so a bad regex is refused when the template is read, not at the first capture.
    """
    known = {a.value for a in Activity}
    for key, regexes in overrides.items():
        if key not in known:
            raise BadRequest(
                f"screen patterns name an unknown activity {key!r}; "
                f"use one of {', '.join(sorted(known))}",
                code="invalid_pattern",
            )
        for regex in regexes:
            try:
                _compiled(regex)
            except re.error as e:
                raise BadRequest(
                    f"screen pattern {regex!r} for {key} is not a valid regex: {e}",
                    code="invalid_pattern",
                ) from e
    return replace(profile, patterns={**profile.patterns, **overrides})


@functools.lru_cache(maxsize=1024)
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex, re.MULTILINE)


def tail(screen: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` non-blank lines, escapes and trailing spaces removed: what is matched."""
    kept = [ln.rstrip() for ln in _ANSI.sub("", screen).splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def _matches(text: str, profile: AssistantProfile, activity: Activity) -> bool:
    return any(_compiled(r).search(text) for r in profile.patterns.get(activity.value, ()))


def classify(screen: str, profile: AssistantProfile) -> Activity | None:
    """The activity the screen shows, or None when nothing matches (keep the current one)."""
    text = tail(screen)
    for activity in CHECK_ORDER:
        if _matches(text, profile, activity):
            return activity
    return None


def detail(screen: str, profile: AssistantProfile, activity: Activity | None) -> str:
    """What a waiting assistant asks, for a notification; "" for the other activities.

    The lines that match the activity's patterns, borders and menu cursors trimmed; when some
    of them are questions (a "?", or a closing ":" as in "Password:"), only those, so the menu
    options under a question (and their cursor) do not read as part of it. At most
    `DETAIL_MAX` characters.
    """
    if activity not in WAITING:
        return ""
    lines = tail(screen).split("\n")
    hits = [_clean(ln) for ln in lines if _matches(ln, profile, activity)]
    hits = [h for h in dict.fromkeys(hits) if h] or [_clean(lines[-1])]
    questions = [h for h in hits if "?" in h or h.endswith(":")]
    text = " ".join(questions or hits)
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def _clean(line: str) -> str:
    return " ".join(line.strip(_BORDER).lstrip("❯›>●○⎿⏺").split())


class Debouncer(msgspec.Struct, frozen=True, kw_only=True):
    """Turns a stream of classifications into the few changes worth recording.

    A new classification is reported once it has held for `settle_s`, and no sooner than
    `min_interval_s` after the last report, so a spinner that flickers between frames does not
    flood the log. A waiting assistant (a question, a login) is reported as soon as it has
    settled: a person must be told quickly. A new question while waiting is a change too.
    Seed `reported` with the agent's recorded activity so it is not reported again.
    After a report, `reported_detail` holds the question that goes with it.
    """

    settle_s: float = 0.5
    min_interval_s: float = 1.0
    reported: Activity | None = None
    reported_detail: str = ""
    reported_at: float | None = None
    candidate: Activity | None = None
    candidate_detail: str = ""
    candidate_since: float = 0.0

    def observe(
        self, activity: Activity | None, detail: str, now: float
    ) -> tuple[Debouncer, Activity | None]:
        """Feed one classification at time `now`; returns the new state and a change or None."""
        if activity is None:  # unknown screen: no evidence either way
            return self, None
        said = detail if activity in WAITING else ""
        if (activity, said) == (self.reported, self.reported_detail):
            return replace(self, candidate=None, candidate_detail=""), None
        state = self
        if (activity, said) != (self.candidate, self.candidate_detail):
            state = replace(self, candidate=activity, candidate_detail=said, candidate_since=now)
        if not state._due(now):
            return state, None
        return replace(
            state,
            reported=activity,
            reported_detail=said,
            reported_at=now,
            candidate=None,
            candidate_detail="",
        ), activity

    def _due(self, now: float) -> bool:
        if now - self.candidate_since < self.settle_s:
            return False
        if self.candidate in WAITING or self.reported_at is None:
            return True
        return now - self.reported_at >= self.min_interval_s

"""What each AI assistant looks like on screen, and reading its activity from a capture.

An assistant's activity is read from the bottom of its tmux pane, as a person glancing at it
would: the last `TAIL_LINES` lines that hold text (blank lines and lines of box borders only do
not count) are matched against the profile's regexes. The patterns were checked against
captures of the real screens (tests/assistants/screens, each named with the version it came
from) and come from the assistants' own sources; a template may override them.

Pattern semantics, so an override can rely on them: each regex is searched in the tail (the
lines joined with "\\n", trailing spaces removed, as `tmux capture-pane` prints them) with
`re.MULTILINE`, so `^`/`$` are line anchors and `\\A`/`\\Z` are the ends of the tail. The
first activity in `CHECK_ORDER` with a match wins: a login screen outranks a question, a
question outranks a spinner, a spinner outranks the input box that full-screen assistants
keep drawn while they work. Line-oriented tools (Aider, a shell) keep old output on screen,
so their patterns are anchored near the end (`\\Z`) and an answered question does not count.

A detail is the question asked now: the line of the last match of the first pattern (in the
profile's order) that matches, so a profile lists the question before its menu options; the
column of that line that holds the match (full-screen tools draw status columns), a long
explanation after its "?" cut, a typed answer after "[Yes]:" dropped. Never two lines joined.

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

    `quit_text` is typed (then Enter) to ask politely, and only at the assistant's prompt
    (READY): typed into a dialog it would be an answer (an API key, an OAuth code, "yes, trust
    this folder"). `cancel_keys` are pressed at a dialog or login screen, one at a time with
    the screen read again after each, until the prompt or an exit: each must leave a dialog
    without accepting it (Esc at Claude's trust dialog exits; Ctrl-C at Gemini's API-key box
    clears a stored key, so Gemini's Esc comes first and leaves that box). `quit_keys` end a
    busy assistant (or a foreground command in a shell) that the text cannot reach; a stop
    then falls back to signals.

    Input (a `send`, and the quit text): with `paste`, text goes in as a paste (tmux
    `paste-buffer -p`: in the markers of a bracketed paste when the assistant asked for them,
    as all four and bash's readline do), so its newlines are part of one input and not Enters;
    without, it is typed as keys. Enter is a key of its own after the text: in the same tmux
    call with `enter_with_text` (the assistant tells a paste's end from a key press: a shell),
    else once the screen shows the text and `enter_delay_s` later. Codex took text and Enter
    typed together as one paste and never submitted; Gemini CLI takes an Enter that comes
    within 40 ms of a paste by its own clock as a newline (0.3 s later it submits, unless its
    event loop is starved: then it is later still). With `empty_input` (what the input box shows
    only when it is empty) the Enter is checked: while that text does not show, the Enter was a
    newline, and it is taken back (BSpace) and sent again.
    """

    name: str
    command: str
    quit_text: str
    quit_keys: tuple[str, ...] = ()
    cancel_keys: tuple[str, ...] = ()
    paste: bool = True
    enter_with_text: bool = False
    enter_delay_s: float = 0.0
    empty_input: str = ""
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
    enter_with_text=True,  # readline: a paste's end marker, then Enter runs it
    # Ctrl-D at an empty prompt. Not Ctrl-C first: readline drops the keys typed after it.
    quit_keys=("C-d",),
    cancel_keys=("C-c",),  # a password or yes/no prompt abandoned: back at the prompt
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
# glyphs · ✢ * ✶ ✻ ✽ ✳; permission dialogs "Do you want to proceed?" over "❯ 1. Yes" and
# "No, and tell Claude what to do differently (esc)". First run (2.1.197, no login, no
# network): without onboarding done it exits at "Unable to connect to Anthropic services";
# with it, the trust dialog "Quick safety check: Is this a project you created or one you
# trust?" ("Enter to confirm · Esc to cancel"; Esc exits, Ctrl-C does nothing), then the
# prompt with "Not logged in · Run /login" at the right of the status line (a line or two
# under it), "Select login method:" after /login, "Paste code here if prompted >" after a
# choice. Ready: the "❯ " input box.
CLAUDE_CODE = AssistantProfile(
    name="claude-code",
    command="claude",
    quit_text="/exit",
    quit_keys=("C-c", "C-c"),  # "Press Ctrl-C again to exit"
    # Esc leaves the trust dialog (exits), the login menu and the code box (back to the
    # prompt), and declines a permission dialog; Ctrl-C for what Esc does not close.
    cancel_keys=("Escape", "Escape", "C-c", "C-c"),
    patterns=_patterns(
        login=(
            r"Select login method",
            r"Paste code here if prompted",
            r"OAuth token has expired",
            r"Claude account with subscription",
            # printed as a reply; it counts while it is the last thing above the input box
            r"(Invalid API key|Please run /login|Missing API key)[^\n]*(\n[^\n]*){0,5}\Z",
            r"Not logged in · (Please )?[Rr]un /login",  # the status line, while logged out
        ),
        waiting=(
            r"(Do|Would) you (want|like) to (proceed|make this edit|create|overwrite|allow)",
            r"Is this a project you created or one you trust\?",
            r"Do you trust the files in this folder\?",
            r"Yes, I trust this folder",
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

# Codex CLI (ratatui TUI, codex-rs/tui), 0.171: status "• Working (3s • esc to interrupt)",
# "• Reconnecting... 4/5 (2s • esc to interrupt)"; approvals "Would you like to run the
# following command?" with "Yes, proceed" and "Press enter to confirm or esc to cancel".
# First run: "Choose how you want to use Codex." over "> 1. Sign in with ChatGPT" (the
# cursor is ">", the composer's "›"), "Sign in another way", the API-key box "Paste or type
# your API key"; then "Trust this folder? Codex can read, edit, ..." over "› 1. Trust and
# continue" (the composer's glyph as the menu cursor: the question outranks it). Esc there
# goes to the "Agent command center", a picker whose search box takes typed text (a typed
# "/quit" becomes a search). Ctrl-C leaves every one of them unsaved. Ready: "› Ask Codex".
# `--no-daemon`: otherwise the TUI starts a background app server that outlives it (and
# that cannot start in the sandbox: mkdir /tmp/codex-daemon-0).
CODEX = AssistantProfile(
    name="codex",
    command="codex --no-daemon",
    quit_text="/quit",
    quit_keys=("C-c", "C-c"),  # "ctrl + c again to quit"
    cancel_keys=("C-c", "C-c", "C-c"),
    patterns=_patterns(
        login=(
            r"Choose how you want to use Codex",
            r"Paste or type your API key",
            r"Use your own OpenAI API key",
            r"Sign in another way",
            r"Finish signing in via your browser",
            r"Sign in with ChatGPT",
            r"Provide your own API key",
        ),
        waiting=(
            r"Would you like to (run the following command|make the following edits)\?",
            r"Trust this folder\?",
            r"Allow command\?",
            r"allow Codex to work in this folder|Do you trust the contents of this directory",
            r"needs your approval",
            r"Agent command center",
            r"Yes, proceed",
            r"Press enter to confirm or esc to cancel",
        ),
        working=(r"esc to interrupt", r"(?i)ctrl\s*\+?\s*c to interrupt"),
        ready=(r"(?m)^\s*[›▌](\s|$)", r"\? for shortcuts", r"context left", r"⏎ send"),
    ),
)

# Aider 0.86 (prompt_toolkit, line oriented): questions end "(Y)es/(N)o ... [Yes]: " on the
# last line (io.confirm_ask), the answer typed after it; first run in a repository asks "Add
# .aider* to .gitignore (recommended)?", with no key "Login to OpenRouter or create a free
# account?", after an upgrade "Would you like to see what's new in this version?". While
# the model thinks, "█░ Waiting for <model>" is the last line (aider/waiting.py). Ctrl-C at
# a question ends it (a KeyboardInterrupt, nothing saved). Ready: "> " or "<mode>> ".
AIDER = AssistantProfile(
    name="aider",
    command="aider",
    quit_text="/exit",
    quit_keys=("C-c", "C-c"),  # "^C again to exit"
    cancel_keys=("C-c", "C-c"),
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

# Gemini CLI 0.61 (Ink TUI): spinner "⠹ Thinking... (esc to cancel, 9s)"; confirmations
# "Allow execution of: 'rm'?", "Apply this change?", "Yes, allow once" and "Waiting for
# user confirmation". First run: "Do you trust the files in this folder?" (Esc exits: "A
# folder trust level must be selected"), then "How would you like to authenticate for this
# project?", and after "Use Gemini API Key" the box "Enter Gemini API Key" ("Press Enter to
# submit, Esc to cancel, Ctrl+C to clear stored key": Esc first, always). Ready: the input
# box "> Type your message or @path/to/file".
GEMINI = AssistantProfile(
    name="gemini",
    command="gemini",
    quit_text="/quit",
    enter_delay_s=0.3,  # an Enter at once after a paste is a newline (0.61.0, measured)
    empty_input="Type your message",
    quit_keys=("C-c", "C-c"),  # "Press Ctrl+C again to exit"
    cancel_keys=("Escape", "C-c", "C-c"),
    patterns=_patterns(
        login=(
            r"How would you like to authenticate for this project\?",
            r"Enter Gemini API Key",
            r"Paste your API key here",
            r"Waiting for auth",
            r"GEMINI_API_KEY[^\n]*not (found|set)|must specify the GEMINI_API_KEY",
        ),
        waiting=(
            r"Allow execution of",
            r"Apply this change\?",
            r"Do you trust the files in this folder\?",
            r"Do you trust this folder\?",
            r"Do you want to proceed\?",
            r"Waiting for user confirmation",
            r"Yes, allow once",
            r"Trust folder \(",
        ),
        working=(r"esc to cancel, \d", r"(?m)^\W*[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]\s"),
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
    """The last `lines` lines with text, escapes and trailing spaces removed: what is matched.

    Blank lines and lines of box borders only (a dialog's empty rows) do not count, so a
    full-screen dialog's question is in the tail however airy its box is drawn."""
    kept = [ln.rstrip() for ln in _ANSI.sub("", screen).splitlines() if ln.strip(_BORDER)]
    return "\n".join(kept[-lines:])


def _matches(text: str, profile: AssistantProfile, activity: Activity) -> bool:
    return any(_compiled(r).search(text) for r in profile.patterns.get(activity.value, ()))


# The first-run dialogs of the four, where no hook fires yet (its session has not started):
# the folder-trust questions. The screen is read there whatever a hook said before.
FIRST_RUN = re.compile(
    r"Is this a project you created or one you trust\?"  # Claude Code
    r"|Do you trust (the files in |the contents of )?this (folder|directory)\?"  # all three
    r"|Trust this folder\?|allow Codex to work in this folder"  # Codex
    r"|Do you trust the files in this folder\?"  # Gemini
)


def first_run(screen: str) -> bool:
    """Whether the screen shows an assistant's first-run (folder trust) dialog."""
    return FIRST_RUN.search(tail(screen)) is not None


def classify(screen: str, profile: AssistantProfile) -> Activity | None:
    """The activity the screen shows, or None when nothing matches (see `Debouncer`)."""
    text = tail(screen)
    for activity in CHECK_ORDER:
        if _matches(text, profile, activity):
            return activity
    return None


def detail(screen: str, profile: AssistantProfile, activity: Activity | None) -> str:
    """What a waiting assistant asks now, for a notification; "" for the other activities.

    The first of the activity's patterns (in the profile's order) that matches a line that is
    not a menu option names the question: the line of its last match (the latest question on
    a line-oriented screen), as `_question` trims it. At most `DETAIL_MAX` characters.
    """
    if activity not in WAITING:
        return ""
    text = tail(screen)
    said = ""
    for regex in profile.patterns.get(activity.value, ()):
        for match in reversed(list(_compiled(regex).finditer(text))):
            said = _question(text, match.start())
            if said and not _OPTION.match(said):
                return _trimmed(said)
    lines = text.split("\n")
    return _trimmed(_clean(lines[-1]) if lines else "")


_OPTION = re.compile(r"\d+\.\s")  # "1. Yes, proceed": a menu option, not the question
_COLUMNS = re.compile(r"(?:\S| (?=\S))+")  # status lines set columns 2+ spaces apart
_TYPED = re.compile(r"(\[[^\]\n]*\]:)\s.*$")  # "[Yes]: y": the answer being typed
_LONG_AFTER_QUESTION = 60  # characters after a "?" that make an explanation, not the question


def _question(text: str, at: int) -> str:
    """The question around position `at` of the tail: its line, the column holding `at`,
    cleaned; an explanation after the "?" cut; a typed answer dropped."""
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    line = text[start : len(text) if end < 0 else end]
    rel = at - start
    while rel < len(line) and line[rel] in _BORDER:  # a match that starts at the indent
        rel += 1
    column = next((c.group() for c in _COLUMNS.finditer(line) if c.start() <= rel < c.end()), line)
    said = _TYPED.sub(r"\1", _clean(column))
    mark = said.find("?")
    if mark >= 0 and len(said) - mark - 1 > _LONG_AFTER_QUESTION:
        said = said[: mark + 1]
    return said.removesuffix(" >").strip()


def _trimmed(text: str) -> str:
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def _clean(line: str) -> str:
    return " ".join(line.strip(_BORDER).lstrip("❯›>●○⎿⏺").split())


LAST_WORDS_LINES = 4
LAST_WORD_LINE_MAX = 120
_TMUX_DEAD = re.compile(r"^Pane is dead \(")  # tmux's remain-on-exit line


def last_words(screen: str, lines: int = LAST_WORDS_LINES) -> str:
    """The last lines a dead pane shows (tmux's own "Pane is dead" line left out), each cut at
    `LAST_WORD_LINE_MAX` characters, joined with " / ": for the reason an assistant that exited
    is recorded with ("Unable to connect to Anthropic services / Failed to connect to ...")."""
    kept = [_clean(ln) for ln in tail(screen, lines + 1).split("\n") if not _TMUX_DEAD.match(ln)]
    cut = [k if len(k) <= LAST_WORD_LINE_MAX else k[: LAST_WORD_LINE_MAX - 1] + "…" for k in kept]
    return " / ".join(k for k in cut[-lines:] if k)


class Debouncer(msgspec.Struct, frozen=True, kw_only=True):
    """Turns a stream of classifications into the few changes worth recording.

    A new classification is reported once it has held for `settle_s`, and no sooner than
    `min_interval_s` after the last report, so a spinner that flickers between frames does not
    flood the log. A waiting assistant (a question, a login) is reported as soon as it has
    settled: a person must be told quickly. A new question while waiting is a change too.
    A screen that matches nothing and stands still for `unknown_s` is READY (with no detail):
    the question or spinner last seen is gone, and keeping it would tell a person something
    that is no longer on screen. An unrecognised screen that still moves (output streaming)
    is no evidence yet. Seed `reported` with the agent's recorded activity so it is not
    reported again. After a report, `reported_detail` holds the question that goes with it.
    """

    settle_s: float = 0.5
    min_interval_s: float = 1.0
    unknown_s: float = 3.0
    reported: Activity | None = None
    reported_detail: str = ""
    reported_at: float | None = None
    candidate: Activity | None = None
    candidate_detail: str = ""
    candidate_since: float = 0.0
    unknown_since: float | None = None

    def observe(
        self, activity: Activity | None, detail: str, now: float, *, still: bool = True
    ) -> tuple[Debouncer, Activity | None]:
        """Feed one classification at time `now` (`still`: the screen did not change since the
        last one); returns the new state and a change or None."""
        if activity is None:
            return self._unknown(now, still)
        state = self if self.unknown_since is None else replace(self, unknown_since=None)
        said = detail if activity in WAITING else ""
        if (activity, said) == (state.reported, state.reported_detail):
            return replace(state, candidate=None, candidate_detail=""), None
        if (activity, said) != (state.candidate, state.candidate_detail):
            state = replace(state, candidate=activity, candidate_detail=said, candidate_since=now)
        if not state._due(now):
            return state, None
        return state._report(activity, said, now), activity

    def pending(self) -> bool:
        """Whether a change is being settled (a candidate, or an unknown screen's clock)."""
        return self.candidate is not None or (
            self.unknown_since is not None and self.reported is not A.READY
        )

    def _unknown(self, now: float, still: bool) -> tuple[Debouncer, Activity | None]:
        if not still or self.reported in (A.READY, None):
            return (self if self.unknown_since is None else replace(self, unknown_since=None)), None
        since = now if self.unknown_since is None else self.unknown_since
        if now - since < self.unknown_s:
            return (
                self if since == self.unknown_since else replace(self, unknown_since=since)
            ), None
        return self._report(A.READY, "", now), A.READY

    def _report(self, activity: Activity, said: str, now: float) -> Debouncer:
        return replace(
            self,
            reported=activity,
            reported_detail=said,
            reported_at=now,
            candidate=None,
            candidate_detail="",
            unknown_since=None,
        )

    def _due(self, now: float) -> bool:
        if now - self.candidate_since < self.settle_s:
            return False
        if self.candidate in WAITING or self.reported_at is None:
            return True
        return now - self.reported_at >= self.min_interval_s

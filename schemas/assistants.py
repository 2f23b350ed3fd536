"""What each AI assistant looks like on screen, and reading its activity from a capture.

An assistant's activity is read from the bottom of its tmux pane, as a person glancing at it
would: the last `TAIL_LINES` lines that hold text (blank lines and lines of box borders only do
not count) are matched against the profile's regexes. The built-in profiles
(schemas/builtin_profiles.py) were checked against captures of the real screens
(tests/assistants/screens, each named with the version it came from) and come from the
assistants' own sources; a template may override them.

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

from schemas.errors import BadRequest
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

"""The built-in assistant profiles: how fleetd runs, reads and quits each of the four assistants
and a plain shell (see `schemas.assistants` for what the patterns mean and how they are matched).

Each profile's patterns were checked against captures of the real screens
(tests/assistants/screens, each named with the version it came from) and come from the
assistants' own sources; a template may override them (`schemas.assistants.with_patterns`).
"""

# The patterns hold the assistants' own glyphs (❯ ›), which look like ">" on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

from msgspec.structs import replace

from schemas.assistants import AssistantProfile
from schemas.errors import UnknownTemplate
from schemas.states import Activity

A = Activity


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

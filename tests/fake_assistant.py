"""A stand-in for Claude Code, Codex, Aider and Gemini CLI: the screens, none of the AI.

Activity detection and the agent actor are tested against what the real assistants print,
without an account or a network: this script draws each assistant's spinner (redrawn in
place), its question with a menu, its login screen and its input prompt, and reads the
keyboard so a test can answer it.

    python tests/fake_assistant.py --as claude --script work,ask,work,ready

Script steps run in order, then the prompt stays up:
- `work` spins until a line is typed; `work:N` spins N seconds.
- `ask` asks to run a command; y, yes, 1, 2 or an empty line approve (on to the next step),
  anything else declines (on to the next `ready`).
- `login` shows the login screen until a line is typed.
- `ready` shows the prompt and waits: a step name (`work:2`, `ask`, ...) runs that step,
  other text is a prompt for the assistant (`--reply-work` seconds of work).
The profile's quit text, Ctrl-C twice, or the end of input ends it with status 0.
"""

# The screens hold the assistants' own glyphs (❯ ›), which look like ">" on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.builtin_profiles import BUILTIN

FRAME_S = 0.1
PROFILES = {"claude": "claude-code", "codex": "codex", "aider": "aider", "gemini": "gemini"}
STEPS = ("work", "ask", "login", "ready")
YES = {"", "y", "yes", "1", "2"}
SEP = "─" * 60


class Look(NamedTuple):
    """One assistant's screens; `inline` ones keep answered questions on screen (Aider)."""

    spinner: Callable[[int, float], list[str]]
    question: list[str]
    login: list[str]
    prompt: list[str]
    echo: str  # how a sent prompt stays in the transcript
    done: str  # printed when a piece of work ends
    inline: bool = False


def _claude_spinner(i: int, t: float) -> list[str]:
    glyph = "·✢*✶✻✽"[i % 6]
    line = f"{glyph} Thinking… ({int(t)}s · ↑ {i * 37} tokens · esc to interrupt)"
    return [line, "", SEP, "❯ ", SEP, "  ? for shortcuts"]


def _codex_spinner(i: int, t: float) -> list[str]:
    return [f"• Working ({int(t)}s • esc to interrupt)", "", "› Ask Codex to do anything", ""]


def _aider_spinner(i: int, t: float) -> list[str]:
    bar = "".join("█" if j == i % 6 else "░" for j in range(6))
    return [f"{bar} Waiting for anthropic/claude-sonnet-4"]


def _gemini_spinner(i: int, t: float) -> list[str]:
    glyph = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"[i % 10]
    return [
        f"{glyph} Considering the build layout (esc to cancel, {int(t)}s)",
        "",
        *_gemini_box(),
        "~/repo (main*)       no sandbox       gemini-2.5-pro (99% context left)",
    ]


def _gemini_box() -> list[str]:
    return ["╭" + SEP + "╮", "│ >   Type your message or @path/to/file", "╰" + SEP + "╯"]


LOOKS: dict[str, Look] = {
    "claude": Look(
        spinner=_claude_spinner,
        question=[
            "╭" + SEP,
            "│ Bash command",
            "│",
            "│   rm -rf build/",
            "│   Remove the stale build directory",
            "│",
            "│ Do you want to proceed?",
            "│ ❯ 1. Yes",
            "│   2. Yes, and don't ask again for rm commands in this project",
            "│   3. No, and tell Claude what to do differently (esc)",
            "╰" + SEP,
        ],
        login=[
            " Claude Code can be used with your Claude subscription or billed based on API",
            " usage through your Console account.",
            "",
            " Select login method:",
            "",
            " ❯ 1. Claude account with subscription · Pro, Max, Team, or Enterprise",
            "",
            "   2. Anthropic Console account · API usage billing",
        ],
        prompt=[SEP, "❯ ", SEP, "  ? for shortcuts"],
        echo="> {}",
        done="⏺ Done: the build directory is clean and the project rebuilt.",
    ),
    "codex": Look(
        spinner=_codex_spinner,
        question=[
            "  Would you like to run the following command?",
            "",
            "  Reason: remove the stale build directory",
            "",
            "  $ rm -rf build/",
            "",
            "› 1. Yes, proceed (y)",
            "  2. Yes, and don't ask again for this command (a)",
            "  3. No, and tell Codex what to do differently (esc)",
            "",
            "  Press enter to confirm or esc to cancel",
        ],
        login=[
            "  >_ Welcome to Codex, OpenAI's command-line coding agent",
            "",
            "  Sign in with ChatGPT to use Codex as part of your paid plan",
            "  or connect an API key for usage-based billing",
            "",
            "> 1. Sign in with ChatGPT",
            "     Usage included with Plus, Pro, Team, and Enterprise plans",
            "",
            "  2. Provide your own API key",
            "     Pay for what you use",
            "",
            "  Press Enter to continue",
        ],
        prompt=["› Ask Codex to do anything", "", "  100% context left · ? for shortcuts"],
        echo="› {}",
        done="• Removed build/ and rebuilt the project.",
    ),
    "aider": Look(
        spinner=_aider_spinner,
        question=["src/app.py", "Add file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]: "],
        login=[
            "No LLM model was specified and no API keys were provided.",
            "OpenRouter provides free and paid access to many LLMs.",
            "Login to OpenRouter or create a free account? (Y)es/(N)o [Yes]: ",
        ],
        prompt=[SEP, "> "],
        echo="> {}",
        done="Tokens: 2.1k sent, 310 received. Cost: $0.01 message, $0.01 session.",
        inline=True,
    ),
    "gemini": Look(
        spinner=_gemini_spinner,
        question=[
            "╭" + SEP + "╮",
            "│ ?  Shell rm -rf build/",
            "│",
            "│   rm -rf build/",
            "│",
            "│ Allow execution of: 'rm'?",
            "│",
            "│ ● 1. Yes, allow once",
            "│   2. Yes, allow always ...",
            "│   3. No, suggest changes (esc)",
            "╰" + SEP + "╯",
        ],
        login=[
            "╭" + SEP + "╮",
            "│ ? Get started",
            "│",
            "│   How would you like to authenticate for this project?",
            "│",
            "│   ● 1. Login with Google",
            "│     2. Use Gemini API Key",
            "│     3. Vertex AI",
            "│",
            "│   (Use Enter to select)",
            "╰" + SEP + "╯",
        ],
        prompt=_gemini_box(),
        echo="> {}",
        done="✦ I removed build/ and rebuilt the project.",
    ),
}


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class Live:
    """The part of the screen that is redrawn in place (a spinner, a dialog), as Ink does."""

    def __init__(self) -> None:
        self.height = 0

    def draw(self, lines: list[str]) -> None:
        self.clear()
        out("\n".join(lines))
        self.height = len(lines)

    def clear(self) -> None:
        """Erase the drawn lines: cursor to their first line, clear to the end of screen."""
        if self.height:
            up = f"\x1b[{self.height - 1}A" if self.height > 1 else ""
            out(f"\r{up}\x1b[J")
        self.height = 0

    def commit(self) -> None:
        """Leave the drawn lines in the transcript."""
        if self.height:
            out("\n")
        self.height = 0


class Keyboard:
    """Keys from stdin, one line at a time, with a timeout, edited as a TUI edits them.

    The tty is in raw mode (see `raw_keys`), so Ctrl-C arrives as a key: twice within 3 s
    quits, as in the real assistants, however fast tmux sends the two.
    """

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.lines: list[str] = []
        self.typed = bytearray()
        self.interrupted_at = -10.0

    def line(self, timeout: float | None = None) -> str | None:
        """The next line typed, or None after `timeout`; EOFError when input ends or quits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.lines:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise EOFError
            self.feed(chunk)
        return self.lines.pop(0)

    def feed(self, chunk: bytes) -> None:
        for byte in chunk:
            if byte == 0x0A:  # Enter (the tty maps the CR that tmux sends to LF)
                self.lines.append(self.typed.decode(errors="replace"))
                self.typed.clear()
            elif byte == 0x03:  # Ctrl-C: the first clears the line, a second one quits
                now = time.monotonic()
                if now - self.interrupted_at < 3.0:
                    raise EOFError
                self.interrupted_at = now
                self.typed.clear()
            elif byte == 0x04 and not self.typed:  # Ctrl-D on an empty line
                raise EOFError
            elif byte in (0x7F, 0x08):
                del self.typed[-1:]
            elif byte != 0x0D:
                self.typed.append(byte)


class Fake:
    def __init__(self, look: Look, quit_text: str, reply_work: float) -> None:
        self.look, self.quit_text, self.reply_work = look, quit_text, reply_work
        self.live, self.keys = Live(), Keyboard()

    def read(self, timeout: float | None = None) -> str | None:
        line = self.keys.line(timeout)
        if line is not None and line.strip() == self.quit_text:
            raise EOFError
        return line

    def work(self, seconds: float | None) -> None:
        """Spin for `seconds`, or until a line is typed; then the result stays on screen."""
        start, frame = time.monotonic(), 0
        while True:
            elapsed = time.monotonic() - start
            self.live.draw(self.look.spinner(frame, elapsed))
            frame += 1
            if seconds is None:
                if self.read(FRAME_S) is not None:
                    break
            elif elapsed >= seconds:
                break
            else:
                time.sleep(min(FRAME_S, seconds - elapsed))
        self.live.clear()
        out(self.look.done + "\n")

    def answer(self, screen: list[str]) -> str:
        """Show a dialog until a line is typed; the answer, the dialog gone (or kept inline)."""
        self.live.draw(screen)
        line = self.read() or ""
        if self.look.inline:
            out(line)
            self.live.commit()
        else:
            self.live.clear()
        return line

    def ready(self) -> str:
        """Show the prompt until a line is typed; the line, kept in the transcript."""
        self.live.draw(self.look.prompt)
        line = self.read() or ""
        self.live.clear()
        out(self.look.echo.format(line) + "\n")
        return line


def is_step(text: str) -> bool:
    name, _, arg = text.partition(":")
    if name not in STEPS or (arg and name != "work"):
        return False
    try:
        return not arg or float(arg) >= 0
    except ValueError:
        return False


def run(fake: Fake, script: list[str]) -> None:
    """Play the script, then keep the prompt up; EOFError (a quit) ends it."""
    pending = list(script)
    while True:
        step = pending.pop(0) if pending else "ready"
        name, _, arg = step.partition(":")
        if name == "work":
            fake.work(float(arg) if arg else None)
        elif name == "login":
            fake.answer(fake.look.login)
            out("Login successful.\n")
        elif name == "ask":
            if fake.answer(fake.look.question).strip().lower() not in YES:
                out("Declined.\n")
                while pending and pending[0] != "ready":
                    pending.pop(0)
        else:
            typed = fake.ready()
            if is_step(typed):
                pending.insert(0, typed)
            elif typed:
                pending.insert(0, f"work:{fake.reply_work}")


@contextlib.contextmanager
def raw_keys() -> Iterator[None]:
    """The tty hands over each key unechoed (Ctrl-C too), as real TUIs set it; output is as is."""
    if not os.isatty(0):
        yield
        return
    saved = termios.tcgetattr(0)
    raw = termios.tcgetattr(0)
    raw[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
    raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
    termios.tcsetattr(0, termios.TCSANOW, raw)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSANOW, saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--as", dest="who", choices=sorted(LOOKS), default="claude")
    parser.add_argument("--script", default="", help="steps, comma separated (see above)")
    parser.add_argument("--reply-work", type=float, default=1.0, help="seconds per prompt")
    args = parser.parse_args(argv)
    script = [s for s in args.script.split(",") if s]
    for step in script:
        if not is_step(step):
            parser.error(f"unknown step {step!r}; steps are {', '.join(STEPS)} (work:N)")
    profile = BUILTIN[PROFILES[args.who]]
    fake = Fake(LOOKS[args.who], profile.quit_text, args.reply_work)
    with raw_keys():
        try:
            run(fake, script)
        except EOFError:
            fake.live.commit()
            out("Goodbye!\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

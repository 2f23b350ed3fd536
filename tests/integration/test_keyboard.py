"""An Enter that an assistant took as a newline inside its paste is taken back and sent again.

Gemini CLI takes an Enter that comes within 40 ms of a paste, by its own clock, as a newline;
on a loaded machine its event loop is starved and that window stretches past the 0.3 s fleetd
waits, so a `send` (and a stop's `/quit`) sat in its box unsent (a loaded suite run saw it).
The stand-in here has the same rule with a 1 s window, so the first Enter always lands in it:
with the profile's `empty_input` the text is submitted once, newlines and all; without it the
text stays in the box (the old behaviour, which is what makes the first test able to fail).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from actors.agent import keyboard
from infra.tmux import Tmux
from schemas.builtin_profiles import BUILTIN

GUARD_S = 60.0
BOX = "Type your message"
STAND_IN = r"""
import os, sys, termios, time, tty
WINDOW_S = 1.0
tty.setraw(0)
out = sys.stdout
sent, text, pasting, paste_end, pending = [], "", False, 0.0, b""
def draw():
    out.write("\x1b[2J\x1b[H")
    for s in sent:
        out.write("SUBMITTED:" + repr(s) + "\r\n")
    box = text.replace("\n", "\r\n  ") if text else "@@BOX@@"
    out.write("> " + box + "<\r\n")
    out.flush()
out.write("\x1b[?2004h")
draw()
while True:
    pending += os.read(0, 1024)
    while pending:
        if pending.startswith(b"\x1b[200~"):
            pasting, pending = True, pending[6:]
        elif pending.startswith(b"\x1b[201~"):
            pasting, paste_end, pending = False, time.monotonic(), pending[6:]
        elif pending.startswith(b"\x1b") and len(pending) < 6:
            break
        else:
            ch, pending = pending[:1].decode(), pending[1:]
            if pasting:
                text += "\n" if ch == "\r" else ch
            elif ch == "\r":
                if time.monotonic() - paste_end < WINDOW_S:
                    text += "\n"
                elif text.strip():
                    sent.append(text)
                    text = ""
            elif ch == "\x7f":
                text = text[:-1]
            else:
                text += ch
    draw()
""".replace("@@BOX@@", BOX)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(f"fleet-kb-{uuid.uuid4().hex[:8]}")
    yield server
    server.kill_server()


def _screen_until(tmux: Tmux, ok: str, what: str) -> str:
    deadline = time.monotonic() + GUARD_S
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.capture("kb", "agent", None, False)
        if ok in screen:
            return screen
        time.sleep(0.1)
    pytest.fail(f"waited {GUARD_S:.0f} s for {what}; the screen:\n{screen}")


def _start(tmux: Tmux, tmp_path: Path) -> str:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm-256color", "HOME": str(tmp_path)}
    tmux.create_session("kb", tmp_path, env, command_for_agent=f"{sys.executable} {script}")
    return _screen_until(tmux, BOX, "the stand-in's empty box")


def test_an_enter_taken_as_a_newline_is_taken_back_and_sent_again(
    tmux: Tmux, tmp_path: Path
) -> None:
    before = _start(tmux, tmp_path)
    profile = BUILTIN["gemini"]
    assert profile.empty_input == BOX
    asyncio.run(keyboard.enter_text(tmux, "kb", "agent", profile, "alpha\nomega", before=before))
    screen = _screen_until(tmux, "SUBMITTED:", "the text to be submitted")
    assert "SUBMITTED:'alpha\\nomega'" in screen, screen  # once, with no newline added
    assert screen.count("SUBMITTED:") == 1, screen
    assert BOX in screen, screen


def test_without_an_empty_box_to_read_the_enter_is_not_checked(tmux: Tmux, tmp_path: Path) -> None:
    before = _start(tmux, tmp_path)
    profile = msgspec.structs.replace(BUILTIN["gemini"], empty_input="")
    asyncio.run(keyboard.enter_text(tmux, "kb", "agent", profile, "alpha\nomega", before=before))
    # The stand-in draws its box's end as "<": the Enter's newline puts it on a line of its own.
    screen = _screen_until(tmux, "> alpha\n  omega\n  <", "the Enter to land in the paste window")
    assert "SUBMITTED:" not in screen, screen

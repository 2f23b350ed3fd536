"""Asking an assistant to end without answering anything it asks.

A stop used to type the quit text into whatever was on screen, and that text became an answer:
`/quit` saved as Codex's API key, Enter accepting Claude's "Yes, I trust this folder", `/exit`
submitted as Claude's OAuth code. So the screen is read first, and each round does only what is
safe for what it shows:

- at the assistant's prompt (READY), the quit text goes in as a `send` does (keyboard.py):
  pasted, then Enter on its own, in the same tmux call where the profile allows it (a shell:
  no screen read between) or once the text is on screen (Codex takes text and Enter typed
  together as a paste, and never submits);
- at a dialog or login screen, the profile's next cancel key (Esc, Ctrl-C), never Enter;
- working, or a screen it does not know, its quit keys (Ctrl-C twice): they interrupt and end.

Whatever is left when the time is up is ended with signals by the caller.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

from actors.agent.keyboard import enter_text
from infra import pidfd
from infra.tmux import Tmux
from schemas.assistants import WAITING, AssistantProfile, classify
from schemas.errors import SessionMissing, TmuxFailed
from schemas.states import Activity

WINDOW = "agent"
KEY_WAIT_S = 0.6  # after a key: until the screen changes or the assistant exits, at most this
ECHO_WAIT_S = 1.0  # typed text shows on screen before its Enter is pressed, at most this long
LOOK_S = 0.05


async def quit_assistant(
    tmux: Tmux, session: str, profile: AssistantProfile, pid: int | None, budget_s: float
) -> bool:
    """Ask the assistant in the agent window to end, within `budget_s`; True if its pane
    process (`pid`; None: gone already) exited. Never types text into a dialog."""
    if pid is None:
        return True
    deadline = time.monotonic() + budget_s
    cancels: Iterator[str] = iter(profile.cancel_keys)
    typed = quit_sent = False
    while time.monotonic() < deadline:
        screen = await _capture(tmux, session)
        if screen is None:
            return await _exited(pid, 0)
        activity = classify(screen, profile)
        try:
            if activity is Activity.READY and profile.quit_text and not typed:
                typed = True
                await enter_text(
                    tmux, session, WINDOW, profile, profile.quit_text, before=screen,
                    wait_s=ECHO_WAIT_S,
                )  # fmt: skip
                wait = max(deadline - time.monotonic(), 0) / 2  # it quits now, or did not hear
            elif activity in WAITING:
                key = next(cancels, None)
                if key is None:
                    return await _exited(pid, max(deadline - time.monotonic(), 0))
                await asyncio.to_thread(tmux.send_keys, session, WINDOW, [key])
                wait = KEY_WAIT_S
            elif profile.quit_keys and not quit_sent:
                quit_sent = True
                await asyncio.to_thread(tmux.send_keys, session, WINDOW, list(profile.quit_keys))
                wait = KEY_WAIT_S * 2
            else:
                return await _exited(pid, max(deadline - time.monotonic(), 0))
        except (SessionMissing, TmuxFailed):  # it ended as it was spoken to: its window is gone
            return await _exited(pid, max(deadline - time.monotonic(), 0))
        if await _settled(tmux, session, pid, screen, min(wait, deadline - time.monotonic())):
            return True
    return await _exited(pid, 0)


async def _settled(tmux: Tmux, session: str, pid: int, before: str, timeout: float) -> bool:
    """Until the assistant exits (True) or its screen changes or `timeout` passes (False)."""
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        if await _exited(pid, LOOK_S):
            return True
        if time.monotonic() >= deadline:
            return False
        screen = await _capture(tmux, session)
        if screen is None:
            return await _exited(pid, 0)
        if screen != before:  # a frame drawn in parts: let it finish, unless it exits first
            return await _exited(pid, LOOK_S * 2)  # (a shell shows `exit`, then ends)


async def _exited(pid: int, timeout: float) -> bool:
    try:
        return await pidfd.wait_exit(pid, timeout)
    except OSError:  # no pidfds here: is the process still there?
        await asyncio.sleep(timeout)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


async def _capture(tmux: Tmux, session: str) -> str | None:
    """The agent window's screen, or None when the session or window is gone."""
    try:
        return await asyncio.to_thread(tmux.capture, session, WINDOW, None, False)
    except (SessionMissing, TmuxFailed):
        return None

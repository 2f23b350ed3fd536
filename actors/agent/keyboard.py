"""Text into an assistant's pane the way a person's terminal delivers it: a paste, then Enter.

A `send` and a stop's quit text take this one path. Typed as keys with its Enter in one burst,
text was one paste to Codex (it tells a paste from typing by speed) and never submitted, and a
newline in it was an Enter: half a message sent. So, as the profile says (schemas/assistants.py):
the text is pasted (bracketed when the assistant asked for it), and Enter follows as a key of its
own, either in the same tmux call (a shell) or once the screen shows the paste was taken.
Where the profile names its empty input box, the Enter is checked and, if it became a newline
inside the text (Gemini under load), taken back and sent again.
"""

from __future__ import annotations

import asyncio
import time

from infra.tmux import Tmux
from schemas.assistants import AssistantProfile
from schemas.errors import SessionMissing, TmuxFailed

SHOWN_WAIT_S = 2.0  # until the paste shows on screen before its Enter, at most this long
LOOK_S = 0.05
MARK_CHARS = 24  # of the text's last line: what is looked for on screen (a box wraps the rest)
SUBMIT_WAIT_S = 2.5  # for an Enter to show as a submit (the empty box again), each attempt
SUBMIT_TRIES = 2  # at most 5 s in all: a send is answered within 10 s


async def enter_text(
    tmux: Tmux,
    session: str,
    window: str,
    profile: AssistantProfile,
    text: str,
    *,
    enter: bool = True,
    before: str | None = None,
    wait_s: float = SHOWN_WAIT_S,
) -> None:
    """Put `text` into the window's pane as `profile` says, then Enter if `enter`.

    `before` is the screen as it was (read now if not given), to tell when the paste shows.
    """
    if not enter or not text or profile.enter_with_text:
        await asyncio.to_thread(_put, tmux, session, window, profile, text, enter)
        return
    if before is None:
        before = await _capture(tmux, session, window)
    await asyncio.to_thread(_put, tmux, session, window, profile, text, False)
    await shown(tmux, session, window, text, before or "", wait_s)
    if profile.enter_delay_s > 0:
        await asyncio.sleep(profile.enter_delay_s)
    await asyncio.to_thread(tmux.send_keys, session, window, ["Enter"])
    if profile.empty_input:
        await _until_submitted(tmux, session, window, profile.empty_input)


async def _until_submitted(tmux: Tmux, session: str, window: str, empty_input: str) -> None:
    """Until the input box shows empty again. Gemini takes an Enter inside its paste window
    (40 ms by its own clock, which a starved event loop stretches) as a newline in the text:
    then a BSpace takes that newline back and Enter goes again. Harmless when the first Enter
    was a submit not yet drawn: a BSpace in an empty box and an Enter with nothing in it do
    nothing. Ends at once when the pane is gone or its process exited (a quit text)."""
    for _ in range(SUBMIT_TRIES):
        deadline = time.monotonic() + SUBMIT_WAIT_S
        while time.monotonic() < deadline:
            screen = await _capture(tmux, session, window)
            if screen is None or empty_input in screen or await _gone(tmux, session, window):
                return
            await asyncio.sleep(LOOK_S)
        try:
            await asyncio.to_thread(tmux.send_keys, session, window, ["BSpace", "Enter"])
        except (SessionMissing, TmuxFailed):
            return


async def _gone(tmux: Tmux, session: str, window: str) -> bool:
    try:
        return await asyncio.to_thread(tmux.pane_dead, session, window)
    except (SessionMissing, TmuxFailed):
        return True


def _mark(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][-MARK_CHARS:] if lines else ""


def _put(
    tmux: Tmux, session: str, window: str, profile: AssistantProfile, text: str, enter: bool
) -> None:
    if not text:
        if enter:
            tmux.send_keys(session, window, ["Enter"])
    elif profile.paste:
        tmux.paste_text(session, window, text, enter)
    else:
        tmux.send_text(session, window, text, enter)


async def shown(
    tmux: Tmux, session: str, window: str, text: str, before: str, wait_s: float
) -> bool:
    """Until the screen shows the text was taken: it changed from `before` and shows the end
    of the text's last line, or it changed and then held still for a look (a long paste shown
    folded: "[Pasted Text: 6 lines]"). False when `wait_s` passed first, or the pane is gone."""
    mark = _mark(text)
    deadline = time.monotonic() + wait_s
    last = before
    while time.monotonic() < deadline:
        screen = await _capture(tmux, session, window)
        if screen is None:
            return False
        if screen != before and (mark in screen or screen == last):
            return True
        last = screen
        await asyncio.sleep(LOOK_S)
    return False


async def _capture(tmux: Tmux, session: str, window: str) -> str | None:
    try:
        return await asyncio.to_thread(tmux.capture, session, window, None, False)
    except (SessionMissing, TmuxFailed):
        return None

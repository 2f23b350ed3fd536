"""Input into a pane: literal text typed or pasted (bracketed paste), and named keys."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence

from infra.tmux_socket import SEND_KEYS_MAX, SEP, TmuxSocket, check_name

KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")


class PaneInput(TmuxSocket):
    """What `Tmux` types into its panes; every method is one or two tmux calls."""

    def send_text(self, session: str, window: str, text: str, enter: bool = True) -> None:
        """Type `text` literally: nothing in it is read as a key name or a tmux command.

        Long text goes through a paste buffer (bracketed paste), since a tmux command is
        limited to one message of about 16 KB.
        """
        target = self._target(session, window)
        enter_args = [SEP, "send-keys", "-t", target, "Enter"] if enter else []
        if len(text.encode()) > SEND_KEYS_MAX:
            self._paste(session, target, text)
        elif text:  # the text and its Enter in one tmux call
            args = ["send-keys", "-t", target, "-l", "--", text, *enter_args]
            self._run("send text to", session, *args)
            return
        if enter:
            self._run("send Enter to", session, *enter_args[1:])

    def paste_text(self, session: str, window: str, text: str, enter: bool = False) -> None:
        """Paste `text` into the window's pane, in one tmux call with Enter after it if `enter`.

        `paste-buffer -p` wraps it in bracketed-paste markers when the program asked for them
        (mode 2004), so its newlines (sent as CR, as a terminal's paste does) are part of one
        input; Enter is a key of its own after the end marker. Long text goes through a file.
        """
        target = self._target(session, window)
        enter_args = [SEP, "send-keys", "-t", target, "Enter"] if enter else []
        if len(text.encode()) > SEND_KEYS_MAX:
            self._paste(session, target, text)
            if enter:
                self._run("send Enter to", session, *enter_args[1:])
            return
        buffer = f"fleet-{os.getpid()}-{id(text)}"
        self._run(
            "paste text into", session,
            "set-buffer", "-b", buffer, "--", text, SEP,
            "paste-buffer", "-d", "-p", "-b", buffer, "-t", target, *enter_args,
        )  # fmt: skip

    def _paste(self, session: str, target: str, text: str) -> None:
        buffer = f"fleet-{os.getpid()}-{id(text)}"
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt") as f:
            f.write(text)
            f.flush()
            self._run(
                "paste text into", session,
                "load-buffer", "-b", buffer, f.name, SEP,
                "paste-buffer", "-d", "-p", "-b", buffer, "-t", target,
            )  # fmt: skip

    def send_keys(self, session: str, window: str, keys: Sequence[str]) -> None:
        """Press named keys (`C-c`, `Enter`, `Escape`, `Up`...), in order."""
        for key in keys:
            check_name("key name", key, KEY, "a tmux key name such as C-c, Enter or Escape")
        self._run("send keys to", session, "send-keys", "-t", self._target(session, window), *keys)

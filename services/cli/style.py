"""Colour and terminal codes for the CLI's tables, in plain ANSI (no rich: a few SGR codes do).

When to colour, in order (the first rule that speaks decides):
1. `--no-color` on the command line: never;
2. `FLEET_COLOR=never` / `always`: never / always (a fleet-specific setting is the one thing
   no-color.org lets override `NO_COLOR`; `auto` or unset falls through);
3. `NO_COLOR` set to anything but the empty string (no-color.org): never;
4. otherwise only when the stream is a terminal and `TERM` is not `dumb`.
JSON output is never coloured: the commands that print JSON never call `paint`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import TextIO

import msgspec

RESET = "\x1b[0m"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
CLEAR_LINE = "\r\x1b[2K"  # carriage return, then erase the whole line
CLEAR_DOWN = "\x1b[J"  # erase from the cursor to the end of the screen

_SGR = {
    "green": "32",
    "red": "1;31",
    "yellow": "1;33",
    "blue": "34",
    "cyan": "36",
    "magenta": "1;35",
    "dim": "2",
    "bold": "1",
}

# Every state word the tables show, and its colour. A word not here is printed plain.
COLOURS: dict[str, str] = {
    # lifecycle
    "RUNNING": "green",
    "SPAWNING": "cyan",
    "PAUSED": "blue",
    "STOPPING": "yellow",
    "STOPPED": "dim",
    "ERROR": "red",
    "FAILED": "red",
    "NEW": "dim",
    # activity
    "WORKING": "green",
    "READY": "cyan",
    "VALIDATING": "blue",
    "AWAITING_INPUT": "yellow",
    "LOGIN_REQUIRED": "magenta",
    # health
    "ok": "green",
    "failing": "red",
    "recovering": "yellow",
}

Painter = Callable[[str, str], str]  # (padded cell, the word that picks the colour) -> text


def print_json(value: object) -> None:
    """One JSON document a line on stdout, flushed: what `--json` prints, for programs."""
    print(msgspec.json.encode(value).decode(), flush=True)


def color_wanted(
    stream: TextIO, *, no_color: bool = False, env: Mapping[str, str] | None = None
) -> bool:
    """Whether output to `stream` gets colour, by the rules in the module docstring."""
    env = os.environ if env is None else env
    if no_color:
        return False
    setting = env.get("FLEET_COLOR", "auto").strip().lower()
    if setting in ("never", "no", "off", "0"):
        return False
    if setting in ("always", "yes", "on", "force", "1"):
        return True
    if env.get("NO_COLOR", ""):
        return False
    return is_terminal(stream) and env.get("TERM", "") != "dumb"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def sgr(text: str, colour: str) -> str:
    """`text` wrapped in the colour's SGR code (unknown colours leave it plain)."""
    code = _SGR.get(colour)
    return f"\x1b[{code}m{text}{RESET}" if code else text


def paint_state(cell: str, word: str) -> str:
    """A cell coloured by the state word it shows (RUNNING green, ERROR red, ...)."""
    return sgr(cell, COLOURS.get(word, ""))


def plain(cell: str, word: str) -> str:
    return cell


def painter(enabled: bool) -> Painter:
    return paint_state if enabled else plain


def table(
    headers: list[str],
    rows: list[list[str]],
    *,
    paint: Painter = plain,
    coloured: frozenset[int] = frozenset(),
) -> str:
    """Columns padded to their widest cell; the cells of the `coloured` columns painted.

    Padding is measured on the plain text and the colour wraps the padded cell, so escape
    codes never shift a column. The last column is not padded.
    """
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(headers, widths, strict=True)).rstrip()]
    last = len(headers) - 1
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell if i == last else cell.ljust(width)
            cells.append(paint(padded, cell) if i in coloured else padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def terminal_width(default: int = 120) -> int:
    return shutil.get_terminal_size((default, 24)).columns


def clip(line: str, width: int) -> str:
    """Cut a plain line to `width` columns (a wrapped line would break an in-place redraw)."""
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"

"""When the CLI colours (a real pty for "a terminal"), and that colour never moves a column."""

from __future__ import annotations

import io
import re
from typing import TextIO

import pytest

from services.cli import style

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_terminal_gets_colour_and_a_pipe_does_not(tty: TextIO) -> None:
    env = {"TERM": "xterm-256color"}
    assert style.color_wanted(tty, env=env)
    assert not style.color_wanted(io.StringIO(), env=env)
    assert not style.color_wanted(tty, env={"TERM": "dumb"})


@pytest.mark.parametrize(
    ("env", "no_color", "on_tty", "on_pipe"),
    [
        ({"NO_COLOR": "1"}, False, False, False),
        ({"NO_COLOR": ""}, False, True, False),  # no-color.org: an empty NO_COLOR is unset
        ({}, True, False, False),  # --no-color
        ({"FLEET_COLOR": "never"}, False, False, False),
        ({"FLEET_COLOR": "always"}, False, True, True),
        ({"FLEET_COLOR": "always", "NO_COLOR": "1"}, False, True, True),  # the specific wins
        ({"FLEET_COLOR": "always"}, True, False, False),  # the command line wins over all
        ({"FLEET_COLOR": "auto", "NO_COLOR": "1"}, False, False, False),
    ],
)
def test_the_rules_in_order(
    tty: TextIO, env: dict[str, str], no_color: bool, on_tty: bool, on_pipe: bool
) -> None:
    env = {"TERM": "xterm", **env}
    assert style.color_wanted(tty, no_color=no_color, env=env) is on_tty
    assert style.color_wanted(io.StringIO(), no_color=no_color, env=env) is on_pipe


def test_states_have_their_colours() -> None:
    assert style.paint_state("RUNNING", "RUNNING") == "\x1b[32mRUNNING\x1b[0m"
    assert style.paint_state("ERROR", "ERROR") == "\x1b[1;31mERROR\x1b[0m"
    assert style.paint_state("AWAITING_INPUT", "AWAITING_INPUT").startswith("\x1b[1;33m")
    assert style.paint_state("whatever", "whatever") == "whatever"
    assert style.painter(False)("RUNNING", "RUNNING") == "RUNNING"


def test_a_coloured_table_has_the_plain_table_columns() -> None:
    rows = [["a1", "RUNNING", "AWAITING_INPUT", "x"], ["agent-two", "ERROR", "READY", "y"]]
    headers = ["ID", "LIFECYCLE", "ACTIVITY", "NOTE"]
    plain = style.table(headers, rows)
    coloured = style.table(headers, rows, paint=style.paint_state, coloured=frozenset({1, 2}))
    assert coloured != plain
    assert ANSI.sub("", coloured) == plain
    assert "\x1b[32mRUNNING  \x1b[0m" in coloured  # padded inside the colour
    lines = plain.splitlines()
    assert lines[1].index("RUNNING") == lines[2].index("ERROR") == lines[0].index("LIFECYCLE")

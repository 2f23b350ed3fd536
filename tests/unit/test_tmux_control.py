"""The pure parts of the control-mode terminal: what typed bytes become, how tmux's escaped
output is read back, and the picture that puts a browser's terminal where the pane is."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from infra.tmux_control import KEYS_PER_COMMAND, PaneState, draw, key_commands, unescape

SAFE_LINE = re.compile(r"(copy-mode -q|send-keys) -t %7( -H( [0-9a-f]{2})+)?")


def escape(data: bytes) -> bytes:
    """What tmux does to %output data: bytes below 32 and backslash as octal."""
    return b"".join(b"\\%03o" % b if b < 32 or b == 92 else bytes((b,)) for b in data)


@given(st.binary(max_size=3 * KEYS_PER_COMMAND))
def test_typed_bytes_are_only_hex_of_send_keys_to_the_one_pane(data: bytes) -> None:
    lines = key_commands("%7", data)
    assert lines[0] == "copy-mode -q -t %7"  # out of any mode, whose bindings keys would run
    assert all(SAFE_LINE.fullmatch(line) for line in lines), lines
    typed = b"".join(bytes.fromhex(line.partition(" -H ")[2]) for line in lines[1:])
    assert typed == data


def test_what_tmux_could_read_as_a_command_is_sent_as_hex() -> None:
    text = b"\x02:run-shell 'touch /x'\r\n;kill-server\n"
    assert all(SAFE_LINE.fullmatch(line) for line in key_commands("%7", text))


@given(st.binary())
def test_output_is_read_back_as_the_pane_wrote_it(data: bytes) -> None:
    assert unescape(escape(data)) == data


def test_a_state_that_is_not_numbers_keeps_its_defaults() -> None:
    state = PaneState.parse(b"3 4 1 100 30 1 1 x")
    assert (state.cursor_x, state.cursor_y, state.pane_width, state.pane_height) == (3, 4, 100, 30)
    assert state.alternate_on == state.keypad_cursor_flag == 1 and state.keypad_flag == 0
    assert PaneState.format().startswith("#{cursor_x} #{cursor_y} ")


def test_the_picture_draws_rows_then_modes_then_the_cursor() -> None:
    state = PaneState(cursor_x=5, cursor_y=1, pane_height=2, alternate_on=1, keypad_cursor_flag=1)
    picture = draw(state, [b"\x1b[31mred\x1b[0m", b"$ ls", b"a row beyond the pane"])
    assert picture.startswith(b"\x1b[?1049h\x1b[?7l")  # the alternate screen, no wrapping
    assert b"\x1b[1;1H\x1b[31mred\x1b[0m\x1b[2;1H$ ls" in picture and b"beyond" not in picture
    assert b"\x1b[?7h" in picture and b"\x1b[?1h" in picture  # wrapping back, cursor keys
    assert picture.endswith(b"\x1b[2;6H\x1b[?25h")
    region = draw(PaneState(scroll_region_upper=2, scroll_region_lower=10), [])
    assert b"\x1b[3;11r" in region

"""A terminal onto one tmux pane through control mode (`tmux -C`), whose only input is ours.

An ordinary tmux client reads its terminal's bytes as keys: the prefix, every key binding, the
command prompt (`C-b :` then `run-shell`, a shell of the tmux server's user outside any sandbox),
`switch-client` to another session. A control-mode client reads tmux commands from its stdin
instead, and this module is the only writer of that stdin: the bytes a person types become
`send-keys -H` of their hex values, literal keys that tmux writes to the pane's pty as they are
(never looked up in a key table), and every command names the one pane followed, by its id. So
no typed byte is ever parsed as a tmux command, a key binding or a session name, whatever it
spells. What comes back is the pane's own output, as it wrote it, and a picture of its screen
when the terminal starts, resizes or falls behind.

Protocol facts this relies on (tmux 3.3, `man tmux`, CONTROL MODE):
- Each command line gets one block: `%begin T N F`, its output lines, then `%end T N F` or
  `%error T N F` with the same three numbers. F is 1 for this client's commands, 0 for the
  attach itself and for bindings run by keys. Notifications never come inside a block.
- `%output %P data`, or with pause-after `%extended-output %P age ... : data`, is pane P's
  output: bytes below 32 and backslash as octal `\\ooo`, every other byte as it is.
- With `pause-after=S`, a pane whose output waited S seconds for this client (a slow browser)
  is paused for it (`%pause %P`) until `refresh-client -A '%P:continue'`; what it printed
  meanwhile is lost to this client, so the screen is drawn again from `capture-pane`.
- `refresh-client -C WxH` gives the client a size, which sizes the window as any client's does;
  a control client that never sets one (a viewer: `ignore-size`) does not.
- Keys sent to a pane in a mode (copy mode) run that mode's key bindings; `copy-mode -q` first
  leaves every mode, so typing is only ever bytes to the pane.
- Inside a block of `capture-pane` output the lines are the pane's text, and a pane can print a
  line that looks like `%end ...`: only the exact numbers of the `%begin` end a block, and
  nothing read is ever made into a command, so at worst a pane garbles its own picture.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from schemas.errors import InvalidName, TmuxFailed

log = logging.getLogger(__name__)

PAUSE_AFTER_S = 10  # a reader this far behind gets a fresh picture instead of the backlog
READ_MAX = 256 << 10  # bytes joined into one read
QUEUE_MAX = 256  # chunks waiting for the reader before tmux is left unread (and pauses us)
LINE_MAX = 8 << 20  # one line of tmux's output (a %output chunk, a captured row)
KEYS_PER_COMMAND = 512  # typed bytes per send-keys line (each is 3 bytes of hex)
ANSWER_TIMEOUT_S = 10.0

_SESSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}(\+[A-Za-z0-9_][A-Za-z0-9_-]{0,63})?")
_WINDOW = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_SOCKET = re.compile(r"[A-Za-z0-9_-]{1,100}")
_IDS = re.compile(rb"(%[0-9]+) (@[0-9]+)")
_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Block:
    """The answer to one command: its lines, and whether it ended in %end (not %error)."""

    ok: bool
    lines: list[bytes]

    def text(self) -> str:
        return " ".join(ln.decode(errors="replace") for ln in self.lines).strip()


@dataclass(frozen=True)
class PaneState:
    """What a terminal must know besides the screen's text to go on from a picture of it."""

    cursor_x: int = 0
    cursor_y: int = 0
    cursor_flag: int = 1
    pane_width: int = 80
    pane_height: int = 24
    alternate_on: int = 0
    keypad_cursor_flag: int = 0
    keypad_flag: int = 0
    insert_flag: int = 0
    wrap_flag: int = 1
    origin_flag: int = 0
    scroll_region_upper: int = 0
    scroll_region_lower: int = 23
    mouse_standard_flag: int = 0
    mouse_button_flag: int = 0
    mouse_any_flag: int = 0
    mouse_sgr_flag: int = 0
    mouse_utf8_flag: int = 0

    @classmethod
    def format(cls) -> str:
        return " ".join(f"#{{{f.name}}}" for f in fields(cls))

    @classmethod
    def parse(cls, line: bytes) -> PaneState:
        """The state from `format()`'s expansion; a value that is not a number keeps its default."""
        given = {
            f.name: int(value)
            for f, value in zip(fields(cls), line.split(b" "), strict=False)
            if value.isdigit()
        }
        return cls(**given)


def unescape(data: bytes) -> bytes:
    """`%output` data as the pane wrote it (tmux sends bytes below 32 and `\\` as `\\ooo`)."""
    if b"\\" not in data:
        return data
    return _OCTAL.sub(lambda m: bytes((int(m[1], 8) & 0xFF,)), data)


def _mode(number: int, on: int) -> bytes:
    return b"\x1b[?%d%s" % (number, b"h" if on else b"l")


def draw(state: PaneState, rows: Sequence[bytes]) -> bytes:
    """Bytes that put a terminal where the pane is: `rows` (`capture-pane -p -e`: text with its
    colours) drawn without wrapping, then the pane's modes, scroll region and cursor."""
    out = [_mode(1049, state.alternate_on), b"\x1b[?7l\x1b[0m\x1b[r\x1b[H\x1b[2J"]
    out += [b"\x1b[%d;1H%s" % (i + 1, row) for i, row in enumerate(rows[: state.pane_height])]
    out.append(b"\x1b[0m")
    upper, lower = state.scroll_region_upper, state.scroll_region_lower
    if (upper, lower) != (0, state.pane_height - 1) and upper < lower:
        out.append(b"\x1b[%d;%dr" % (upper + 1, lower + 1))
    out += [_mode(7, state.wrap_flag), _mode(1, state.keypad_cursor_flag), _mode(6, 0)]
    out += [
        b"\x1b=" if state.keypad_flag else b"\x1b>",
        b"\x1b[4h" if state.insert_flag else b"\x1b[4l",
    ]
    for number, on in (
        (1000, state.mouse_standard_flag),
        (1002, state.mouse_button_flag),
        (1003, state.mouse_any_flag),
        (1005, state.mouse_utf8_flag),
        (1006, state.mouse_sgr_flag),
    ):
        out.append(_mode(number, on))
    out.append(b"\x1b[%d;%dH" % (state.cursor_y + 1, state.cursor_x + 1))
    if state.origin_flag:  # after the cursor: DECOM moves it to the region's top
        out.append(_mode(6, 1) + b"\x1b[%d;%dH" % (state.cursor_y - upper + 1, state.cursor_x + 1))
    out.append(_mode(25, state.cursor_flag))
    return b"".join(out)


def key_commands(pane: str, data: bytes) -> list[str]:
    """The command lines that type `data` into `pane`: every byte as its hex value."""
    lines = [f"copy-mode -q -t {pane}"]
    for start in range(0, len(data), KEYS_PER_COMMAND):
        chunk = data[start : start + KEYS_PER_COMMAND]
        lines.append(f"send-keys -t {pane} -H " + " ".join(f"{b:02x}" for b in chunk))
    return lines


def _checked(what: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise InvalidName(what, value, "use only letters, digits, '_' and '-'")
    return value


Answer = asyncio.Future[Block] | Callable[[Block], bytes | None] | None


class PaneTerminal:
    """One `tmux -C attach` client that follows one pane: `read` its output (a picture first),
    `type` into it, `resize` it; nothing else of the tmux server is reachable through it."""

    def __init__(self, proc: asyncio.subprocess.Process, session: str, readonly: bool) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc, self.session, self.readonly = proc, session, readonly
        self.pane = self.window = ""
        self._stdin, self._stdout = proc.stdin, proc.stdout
        self._answers: collections.deque[Answer] = collections.deque()
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        self._synced = False  # output is forwarded only after a picture it follows
        self._state = PaneState()
        self._refused = ""  # what tmux said when the attach itself failed
        self._ended = False
        self._reader = asyncio.create_task(self._read_all())

    @classmethod
    async def open(
        cls, socket: str, session: str, window: str, *, readonly: bool, cols: int, rows: int
    ) -> PaneTerminal:
        """Attach to `session` and follow the active pane of its `window`. A viewer's client
        is read-only and ignores size: it never resizes the window, and nothing is typed."""
        _checked("tmux socket name", socket, _SOCKET)
        _checked("tmux session name", session, _SESSION)
        _checked("tmux window name", window, _WINDOW)
        flags = f"pause-after={PAUSE_AFTER_S}" + (",read-only,ignore-size" if readonly else "")
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # else attach switches ours
        proc = await asyncio.create_subprocess_exec(
            shutil.which("tmux") or "tmux", "-u", "-L", socket,
            "-C", "attach-session", "-f", flags, "-t", f"={session}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env, limit=LINE_MAX,
        )  # fmt: skip
        term = cls(proc, session, readonly)
        try:
            block = await term._ask(f"display-message -p -t '={session}:={window}' "
                                    "'#{pane_id} #{window_id}'")  # fmt: skip
            found = _IDS.fullmatch(block.lines[0] if block.lines else b"")
            if not block.ok or found is None:
                raise TmuxFailed("find window", f"{session}:{window}", block.text() or "no pane")
            term.pane, term.window = found[1].decode(), found[2].decode()
            if not readonly:
                term.resize(cols, rows)
            term._picture()
        except BaseException:
            await term.close()
            raise
        return term

    # -- what the person does ---------------------------------------------------------------

    async def read(self) -> bytes | None:
        """The next bytes for the person's terminal (what is waiting, joined); None at the end."""
        first = await self._out.get()
        chunks, size = [first], len(first or b"")
        while first is not None and not self._out.empty() and size < READ_MAX:
            more = self._out.get_nowait()
            if more is None:
                self._out.put_nowait(None)  # the end, for the next read
                break
            chunks.append(more)
            size += len(more)
        if first is None:
            self._out.put_nowait(None)  # every later read ends too
            return None
        return b"".join(c for c in chunks if c)

    async def type(self, data: bytes) -> None:
        """Send `data` to the pane as keys: bytes, never keys tmux acts on."""
        if data and self.pane and not self.readonly:
            for line in key_commands(self.pane, data):
                self._send(line, None)
            with contextlib.suppress(ConnectionError):
                await self._stdin.drain()

    def resize(self, cols: int, rows: int) -> None:
        """Size this client (so the window, for the latest client to ask): `refresh-client -C`."""
        self._send(f"refresh-client -C {max(1, min(1000, cols))}x{max(1, min(1000, rows))}", None)

    async def close(self) -> None:
        """Detach (end of stdin), then make sure the client is gone."""
        self._ended = True
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    # -- the protocol ---------------------------------------------------------------------

    def _send(self, line: str, *answers: Answer) -> None:
        """Write one command line; its blocks (one per command in it) go to `answers` (a future,
        a callback, or nowhere). The line and its answers' places are taken together, so each
        block meets its command."""
        if self._ended or self._stdin.is_closing():
            for answer in answers:
                if isinstance(answer, asyncio.Future) and not answer.done():
                    answer.set_exception(self._gone())
            return
        self._answers.extend(answers)
        self._stdin.write(line.encode() + b"\n")

    async def _ask(self, line: str) -> Block:
        answer: asyncio.Future[Block] = asyncio.get_running_loop().create_future()
        self._send(line, answer)
        try:
            return await asyncio.wait_for(answer, ANSWER_TIMEOUT_S)
        except TimeoutError:
            raise TmuxFailed(
                "answer for", self.session, f"no answer to {line.split(maxsplit=1)[0]}"
            ) from None

    def _gone(self) -> TmuxFailed:
        return TmuxFailed("attach to", self.session, self._refused or "the tmux client ended")

    def _picture(self) -> None:
        """Ask for the pane's state and screen in one line (no output runs between them); what
        the pane printed before they ran is in the picture, so it is dropped until then."""
        self._synced = False
        pane = self.pane
        state = f"display-message -p -t {pane} '{PaneState.format()}'"
        self._send(f"{state} ; capture-pane -p -e -t {pane}", self._took_state, self._took_screen)

    def _took_state(self, block: Block) -> None:
        if block.ok and block.lines:
            self._state = PaneState.parse(block.lines[0])

    def _took_screen(self, block: Block) -> bytes | None:
        if not block.ok:
            return None
        self._synced = True
        return draw(self._state, block.lines)

    async def _read_all(self) -> None:
        try:
            while line := await self._stdout.readline():
                line = line.removesuffix(b"\n")
                if line.startswith(b"%begin "):
                    await self._block(line.removeprefix(b"%begin "))
                else:
                    await self._notification(line)
        except (ValueError, ConnectionError) as e:  # a line beyond LINE_MAX, a broken pipe
            log.warning("tmux control client of %s: %s", self.session, e)
        except Exception:  # its traceback goes to the error log; the terminal still ends
            log.exception("tmux control client of %s failed", self.session)
        self._ended = True
        for answer in self._answers:
            if isinstance(answer, asyncio.Future) and not answer.done():
                answer.set_exception(self._gone())
        self._answers.clear()
        await self._out.put(None)

    async def _block(self, head: bytes) -> None:
        lines: list[bytes] = []
        ends = {b"%end " + head: True, b"%error " + head: False}
        while raw := await self._stdout.readline():
            line = raw.removesuffix(b"\n")
            if line in ends:
                break
            lines.append(line)
        block = Block(ends.get(line, False) if raw else False, lines)
        if not head.endswith(b" 1"):  # the attach, or a binding: not an answer of ours
            if not block.ok and not self.pane:
                self._refused = block.text()
            return
        answer = self._answers.popleft() if self._answers else None
        if isinstance(answer, asyncio.Future):
            if not answer.done():
                answer.set_result(block)
        elif answer is not None and (data := answer(block)):
            await self._out.put(data)
        elif not block.ok:
            log.debug("tmux control client of %s: %s", self.session, block.text())

    async def _notification(self, line: bytes) -> None:
        name, _, rest = line.partition(b" ")
        pane = self.pane.encode()
        if name == b"%output":
            source, _, data = rest.partition(b" ")
        elif name == b"%extended-output":
            source, _, tail = rest.partition(b" ")
            data = tail.partition(b" : ")[2]
        else:
            if name == b"%pause" and rest == pane:
                self._send(f"refresh-client -A '{self.pane}:continue'", None)
                self._picture()
            elif name == b"%layout-change" and rest.split(b" ", 1)[0] == self.window.encode():
                self._picture()  # resized: tmux reflowed the screen, so draw it as it is now
            elif name == b"%exit" and rest:
                self._refused = self._refused or rest.decode(errors="replace")
            return
        if source == pane and self._synced and data:
            await self._out.put(unescape(data))

"""One tmux server on a fleet-owned socket: running the tmux binary, checking names, building
targets and the argv of a pane's waiting shell. `infra.tmux.Tmux` is built on `TmuxSocket`.

Every call runs the tmux binary with explicit formats, since one `list-panes -F` is much faster
than libtmux's object queries. libtmux gives the Server and Session objects for callers that
want its object API; it is imported only then, so an agent actor's worker does not carry it
(about 3 MB of its memory).

tmux facts this module relies on (tmux 3.3):
- Targets start with `=` for an exact session/window name; without it tmux matches prefixes
  and fnmatch patterns (`kill-session -t a1` would kill `a10`). A pane target needs the `:`
  (`=s:`), a bare `=s` is looked up as a pane and fails.
- tmux splits its argv into commands at any argument that ends with `;`. User text ending
  with `;` must end with `\\;` instead, which tmux turns back into `;`.
- Commands sent in one invocation run in one command-queue pass, so options set right after
  `new-session` apply before the server handles the first window's exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.errors import InvalidName, SessionMissing, TmuxFailed, WindowMissing

if TYPE_CHECKING:
    import libtmux

DEFAULT_SOCKET = "fleetd"
HISTORY_LIMIT = 50_000
WIDTH, HEIGHT = 200, 50
SEND_KEYS_MAX = 4096  # beyond this, text goes through a paste buffer (tmux caps message size)

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
SESSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}(\+[A-Za-z0-9_][A-Za-z0-9_-]{0,63})?")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Separator(str):
    """A real tmux command separator: told apart from user text ";" by identity (CPython keeps
    one object for every one-character string, so a plain ";" would be that object too)."""


SEP = _Separator(";")  # never escaped
# "server exited unexpectedly": the server ended while answering (its last session closed)
MISSING = (
    "can't find session",
    "no server running",
    "error connecting to",
    "server exited unexpectedly",
)
DUPLICATE = "duplicate session"


@dataclass(frozen=True)
class Done:
    """What one tmux invocation answered: its exit status and its lines (as libtmux gave)."""

    returncode: int
    stdout: list[str]
    stderr: list[str]


def _tmux(argv: Sequence[str]) -> Done:
    binary = shutil.which("tmux")
    if binary is None:
        raise FileNotFoundError("tmux")
    proc = subprocess.run(
        [binary, *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="backslashreplace",
        check=False,
    )
    out = proc.stdout.split("\n")
    while out and out[-1] == "":
        out.pop()
    return Done(proc.returncode, out, [line for line in proc.stderr.split("\n") if line])


def check_name(what: str, value: str, pattern: re.Pattern[str], allowed: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidName(what, value, f"use only {allowed}")
    return value


def session_name(name: str) -> str:
    return check_name("tmux session name", name, SESSION, "letters, digits, '_' and '-'")


def window_name(name: str) -> str:
    return check_name("tmux window name", name, NAME, "letters, digits, '_' and '-'")


def pausable(command: str) -> list[str]:
    """The argv of a pane: `/bin/sh` waits for `command` (a shell command line).

    tmux answers a stop of a pane's own process with SIGCONT to its group, so a pane whose
    process is the assistant itself could never be paused. Under this waiting shell, the
    command and all below it can be stopped while the shell (spared) waits. The shell
    traps INT and QUIT so Ctrl-C reaches the command without ending the pane, and exits
    with the command's status, which `pane_dead_status` reports.
    """
    # The status is also left in a pane option: tmux 3.3 sometimes never reaps the shell, and
    # then `#{pane_dead_status}` stays empty.
    keep = 'st=$?; tmux set-option -p @fleet_exit "$st" 2>/dev/null; exit "$st"'
    return ["/bin/sh", "-c", f"trap : INT QUIT\n{command}\n{keep}"]


def confined(prefix: Sequence[str], command: str) -> str:
    """`command` (a shell command line) run through `prefix` (the sandbox), as the command of
    a pane's waiting shell: that shell stays outside the sandbox, so the pane's pid is still
    the shell's, it can still leave its exit status in the pane's options, and the sandboxed
    processes below it cannot end it or reach the tmux server."""
    if not prefix:
        return command
    return f"{shlex.join(prefix)} /bin/sh -c {shlex.quote(command)}"


def live_pids(lines: Iterable[str]) -> list[int]:
    """The pids of `#{pane_dead} #{pane_pid}` lines whose pane still runs."""
    return [int(pid) for dead, _, pid in (ln.partition(" ") for ln in lines) if dead == "0"]


def _escape(arg: str) -> str:
    """Keep tmux from reading a trailing `;` in user text as a command separator."""
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


class TmuxSocket:
    """The plumbing of one tmux server, addressed by socket name: its calls, its targets, what a
    pane displays, its socket; `Tmux` adds sessions, panes and recordings on top."""

    def __init__(
        self,
        socket_name: str = DEFAULT_SOCKET,
        *,
        width: int = WIDTH,
        height: int = HEIGHT,
        history_limit: int = HISTORY_LIMIT,
        shell: str | None = None,
    ) -> None:
        """`shell` is the command line of the interactive shell in windows without a command
        (default: `$SHELL`, else /bin/sh)."""
        self.socket_name = check_name("tmux socket name", socket_name, NAME, "[A-Za-z0-9_-]")
        self.width, self.height, self.history_limit = width, height, history_limit
        self.shell = shell or shlex.quote(os.environ.get("SHELL") or "/bin/sh")

    @property
    def server(self) -> libtmux.Server:
        """libtmux's Server on this socket, for callers that want libtmux's object API."""
        import libtmux  # here, not at the top: see the module docstring

        return libtmux.Server(socket_name=self.socket_name)

    # -- plumbing -------------------------------------------------------------------------

    def _cmd(self, *args: str) -> Done:
        try:
            return _tmux([f"-L{self.socket_name}", *args])
        except FileNotFoundError as e:
            raise TmuxFailed("run on socket", self.socket_name, "tmux is not installed") from e

    def _run(self, action: str, session: str, *args: str) -> list[str]:
        """Run one tmux invocation; `SEP` items separate commands, other args are escaped."""
        argv = [a if a is SEP else _escape(a) for a in args]
        proc = self._cmd(*argv)
        if proc.returncode != 0:
            detail = " ".join(proc.stderr).strip() or f"exit status {proc.returncode}"
            if any(m in detail for m in MISSING):
                raise SessionMissing(session, self.socket_name)
            if "can't find window" in detail or "can't find pane" in detail:
                raise WindowMissing(action, session, detail)
            raise TmuxFailed(action, session, detail)
        return list(proc.stdout)

    def _target(self, session: str, window: str) -> str:
        return f"={session_name(session)}:={window_name(window)}"

    def session(self, name: str) -> libtmux.Session:
        """The libtmux Session, for callers that want libtmux's object API."""
        found = self.server.sessions.filter(session_name=session_name(name))
        if not found:
            raise SessionMissing(name, self.socket_name)
        return found[0]

    def display(self, session: str, window: str, fmt: str) -> str:
        """What tmux's format `fmt` reads for the window's (active) pane (`display-message -p`)."""
        out = self._run(
            "read", session, "display-message", "-p", "-t", self._target(session, window), fmt
        )
        return out[0] if out else ""

    def socket_path(self) -> str:
        """Where this server's socket is: $TMUX_TMPDIR (else /tmp)/tmux-<uid>/<name>."""
        base = os.environ.get("TMUX_TMPDIR") or "/tmp"
        return os.path.join(base, f"tmux-{os.getuid()}", self.socket_name)

    def kill_server(self) -> None:
        """Stop the whole tmux server on this socket (tests, `fleet gc --all`), and remove the
        socket, which tmux leaves behind."""
        self._cmd("kill-server")
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path())

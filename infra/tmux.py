"""tmux on a fleet-owned socket: agent sessions that outlive the actor that made them.

Everything runs on `tmux -L <socket>` so fleetd never touches a user's own tmux server, and
`fleet doctor` can list every session on that socket as ours. How tmux is called, and the tmux
facts it relies on, are in infra/tmux_socket.py; typing into a pane in infra/tmux_input.py.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from infra import procs
from infra.tmux_input import PaneInput
from infra.tmux_socket import (
    DUPLICATE,
    ENV_KEY,
    MISSING,
    NAME,
    SEND_KEYS_MAX,
    SEP,
    check_name,
    confined,
    live_pids,
    pausable,
    session_name,
    window_name,
)
from schemas.errors import InvalidName, TmuxFailed

DEFAULT_WINDOWS = ("agent", "services", "monitor")
USER_SEPARATOR = "+"  # a grouped (per-user) session is "<session>+<user>"; agent ids lack "+"


class Tmux(PaneInput):
    """One tmux server, addressed by socket name; every method is synchronous and cheap."""

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        name: str,
        cwd: str | Path,
        env: dict[str, str],
        windows: Sequence[str] = DEFAULT_WINDOWS,
        command_for_agent: str | None = None,
        recordings: Mapping[str, Path] | None = None,
        prefix: Sequence[str] = (),
        *,
        replace: bool = False,
    ) -> None:
        """Create a detached session; the first window runs the assistant, the rest a shell.

        `prefix` goes before every pane's command, under its waiting shell (see `confined`):
        the sandbox launcher (infra/sandbox.py, inside bubblewrap), which
        `exec`s the pane's waiting shell, so the pane pid is still that shell's.

        Every pane runs under a waiting `/bin/sh` (see `pausable`), so `pane_pids` are those
        shells and the assistant is their child.

        `env` becomes the session environment, so every process started in any window (now
        or later, including respawns) sees it. All of it is one tmux invocation: the agent
        window has `remain-on-exit` before its command can exit, so a crash leaves its screen.

        `replace`: a session of that name (a stale one from an older incarnation) is killed
        with its processes and made anew. tmux refuses the duplicate `new-session` and skips the
        rest of that invocation, so this costs no `has-session` when there is none.
        """
        session_name(name)
        if USER_SEPARATOR in name or not windows:
            raise InvalidName("tmux session name", name, "needs windows and no '+'")
        if not Path(cwd).is_dir():
            raise TmuxFailed("create session", name, f"{cwd} is not a directory")
        first, *rest = [window_name(w) for w in windows]
        env_args = [
            f"-e{check_name('env var', k, ENV_KEY, '[A-Za-z0-9_]')}={v}" for k, v in env.items()
        ]
        # exit-empty off: a server whose last session was just killed exits, and a new
        # session that reaches it meanwhile fails ("server exited unexpectedly"); this one
        # stays up between agents (a restart right after a stop raced it under load).
        args = ["set-option", "-g", "exit-empty", "off", SEP]
        args += ["set-option", "-g", "history-limit", str(self.history_limit), SEP]
        args += ["new-session", "-d", "-s", name, "-n", first, "-c", str(cwd)]
        args += ["-x", str(self.width), "-y", str(self.height), *env_args]
        args += pausable(confined(prefix, command_for_agent or self.shell))
        args += [SEP, "set-option", "-w", "-t", self._target(name, first), "remain-on-exit", "on"]
        for window in rest:
            args += [SEP, "new-window", "-d", "-t", f"={name}:", "-n", window, "-c", str(cwd)]
            args += pausable(confined(prefix, self.shell))
        for window, path in (recordings or {}).items():
            args += [SEP, "pipe-pane", "-o", "-t", self._target(name, window)]
            args.append(self._recorder(path, self.width, self.height))
        try:
            self._run("create session", name, *args)
        except TmuxFailed as e:
            if not replace or not e.detail.startswith(DUPLICATE):
                raise
            self.kill_session(name)
            self._run("create session", name, *args)

    def start_one_off(self, name: str, cwd: str | Path, env: dict[str, str], command: str) -> None:
        """A detached session of one window running `command` (a shell line) and nothing else,
        which closes when the command exits: a pane someone attaches to for one job (`fleet
        login`), not an agent's (no waiting shell, no remain-on-exit, no other windows)."""
        env_args = [
            f"-e{check_name('env var', k, ENV_KEY, '[A-Za-z0-9_]')}={v}" for k, v in env.items()
        ]
        self._run(
            "create session", name,
            "new-session", "-d", "-s", session_name(name), "-n", "agent", "-c", str(cwd),
            "-x", str(self.width), "-y", str(self.height), *env_args, command,
        )  # fmt: skip

    def has_session(self, name: str) -> bool:
        return self._cmd("has-session", "-t", f"={session_name(name)}").returncode == 0

    def list_sessions(self, prefix: str = "") -> list[str]:
        """Names of sessions on this socket that start with `prefix` (none if no server)."""
        proc = self._cmd("list-sessions", "-F", "#{session_name}")
        if proc.returncode != 0:
            detail = " ".join(proc.stderr)
            if any(m in detail for m in MISSING):
                return []
            raise TmuxFailed("list sessions on socket", self.socket_name, detail)
        return [s for s in proc.stdout if s.startswith(prefix)]

    def kill_session(self, name: str, timeout: float = 1.0) -> None:
        """Kill a session, its per-user grouped sessions, and every process left in its panes.

        tmux only sends SIGHUP to the panes, and windows stay alive while any session of the
        group does; so the grouped sessions go too, and what ignores SIGHUP is terminated.
        """
        pids, grouped = self._panes_and_groups(name)
        tree = procs.tree(pids)
        self._kill(name, grouped)
        procs.terminate_processes(tree, timeout, timeout)

    def end_session(
        self,
        name: str,
        polite_timeout: float,
        term_timeout: float,
        known: tuple[Sequence[int], Sequence[str]] | None = None,
    ) -> None:
        """`kill_session` the polite way: every process in the session's panes is ended first
        (SIGTERM, SIGKILL after `polite_timeout`; procs.terminate_tree) while its terminal is
        still there, then the session and its grouped sessions go. Two tmux calls; the panes
        are listed before anything ends, while the server has nothing else to do. `known`:
        the pane pids and grouped sessions as `stop_view` listed them (nothing can have made
        a pane or a session since: one call fewer)."""
        pids, grouped = known if known is not None else self._panes_and_groups(name)
        procs.terminate_tree(pids, polite_timeout, term_timeout)
        self._kill(name, grouped)

    def stop_view(self, name: str) -> tuple[list[tuple[str, int]], list[str]]:
        """(window name, pid) of every live pane of the session, and its grouped (per-user)
        sessions, in one call: what a stop signals, asks to quit and ends."""
        lines = self._run(
            "list panes of", name,
            "list-panes", "-s", "-t", f"={session_name(name)}:",
            "-F", "P #{pane_dead} #{pane_pid} #{window_name}",
            SEP, "list-sessions", "-F", "S #{session_name}",
        )  # fmt: skip
        grouped = f"S {name}{USER_SEPARATOR}"
        panes = [ln[2:].split(" ", 2) for ln in lines if ln.startswith("P ")]
        live = [(window, int(pid)) for dead, pid, window in panes if dead == "0"]
        return live, [ln[2:] for ln in lines if ln.startswith(grouped)]

    def _panes_and_groups(self, name: str) -> tuple[list[int], list[str]]:
        """The live pane pids of a session and its grouped (per-user) sessions, in one call."""
        live, grouped = self.stop_view(name)
        return [pid for _, pid in live], grouped

    def _kill(self, name: str, grouped: Sequence[str]) -> None:
        for user_session in grouped:
            self._cmd("kill-session", "-t", f"={user_session}")  # gone already is fine
        self._run("kill session", name, "kill-session", "-t", f"={name}")

    def grouped_session(self, target: str, user: str) -> str:
        """A session of `target`'s group for one user: same windows, its own current window.

        Idempotent (a user re-attaching gets the same one); `kill_session` of the target
        removes it too. It is not set to destroy-unattached: tmux would destroy it at once,
        before any client attached.
        """
        check_name("user name", user, NAME, "letters, digits, '_' and '-'")
        name = f"{session_name(target)}{USER_SEPARATOR}{user}"
        if not self.has_session(name):
            self._run(
                "create grouped session for",
                target,
                "new-session",
                "-d",
                "-t",
                f"={target}",
                "-s",
                name,
            )
        return name

    def end_user_session(self, target: str, user: str) -> None:
        """Close one user's grouped session, and only it: its windows (and the processes in
        them) are the agent's, so nothing in the panes is signalled."""
        check_name("user name", user, NAME, "letters, digits, '_' and '-'")
        name = f"{session_name(target)}{USER_SEPARATOR}{user}"
        self._cmd("kill-session", "-t", f"={name}")  # gone already is fine

    def attach_argv(self, session: str) -> list[str]:
        """The argv a CLI execs to put the user's terminal in the session (nesting allowed)."""
        tmux = shutil.which("tmux") or "tmux"
        target = f"={session_name(session)}"
        return ["env", "-u", "TMUX", tmux, "-L", self.socket_name, "attach-session", "-t", target]

    # -- panes ----------------------------------------------------------------------------

    def pane_pids(self, session: str) -> list[int]:
        """The pid of the process in every live pane of every window of the session."""
        lines = self._run(
            "list panes of", session,
            "list-panes", "-s", "-t", f"={session_name(session)}:",
            "-F", "#{pane_dead} #{pane_pid}",
        )  # fmt: skip
        return live_pids(lines)

    def pane_pids_by_session(self) -> dict[str, list[int]]:
        """`pane_pids` of every session of the server, in one tmux call ({} with no server)."""
        proc = self._cmd("list-panes", "-a", "-F", "#{pane_dead} #{pane_pid} #{session_name}")
        if proc.returncode != 0:
            return {}
        found: dict[str, list[int]] = {}
        for line in proc.stdout:
            dead, pid, session = [*line.split(" ", 2), "", ""][:3]
            if dead == "0" and pid.isdigit():
                found.setdefault(session, []).append(int(pid))
        return found

    def live_panes(
        self, session: str, typing: tuple[str, str] | None = None
    ) -> list[tuple[str, int]]:
        """(window name, pid) of every live pane of the session, in one tmux call.

        `typing` (window, text): then `send_text` of that text and Enter, in the same call when
        it is short (a polite stop's quit). A process stopped meanwhile reads it once it is
        continued: the text waits in its terminal.
        """
        typed: list[str] = []
        window, text = typing or ("", "")
        if text and len(text.encode()) <= SEND_KEYS_MAX:
            target = self._target(session, window)
            typed = [SEP, "send-keys", "-t", target, "-l", "--", text]
            typed += [SEP, "send-keys", "-t", target, "Enter"]
        lines = self._run(
            "list panes of", session,
            "list-panes", "-s", "-t", f"={session_name(session)}:",
            "-F", "#{pane_dead} #{pane_pid} #{window_name}", *typed,
        )  # fmt: skip
        if typing is not None and not typed:
            self.send_text(session, window, text)
        panes = [ln.split(" ", 2) for ln in lines]
        return [(window, int(pid)) for dead, pid, window in panes if dead == "0"]

    def pane_dead(self, session: str, window: str) -> bool:
        """Whether the window's (active) pane process has exited; see `pane_dead_status`."""
        return self.pane_dead_status(session, window) is not None

    def pane_dead_status(self, session: str, window: str) -> int | None:
        """The exit status of a dead pane (kept by remain-on-exit), or None while it runs."""
        out = self.display(session, window, "#{pane_dead}|#{pane_dead_status}|#{@fleet_exit}")
        dead, status, kept = [*out.split("|"), "", ""][:3]
        if dead != "1":
            return None
        return int(status) if status else int(kept) if kept.lstrip("-").isdigit() else -1

    def respawn(self, session: str, window: str, command: str | None = None) -> None:
        """Restart the window's pane (killing what runs there) with `command` or a shell."""
        args = ["respawn-pane", "-k", "-t", self._target(session, window)]
        self._run("respawn pane in", session, *args, *pausable(command or self.shell))

    def signal_panes(self, session: str, sig: int) -> list[int]:
        """Signal every process group under the session's panes (SIGSTOP/SIGCONT to pause).

        The panes' own waiting shells are spared: see `pausable`.
        """
        pids = self.pane_pids(session)
        return procs.signal_groups(pids, sig, spare=pids)

    def capture(
        self, session: str, window: str, lines: int | None = None, with_history: bool = True
    ) -> str:
        """The pane's text, wrapped lines joined; with history, the whole scrollback.

        `lines` keeps only the last N non-blank-trailing lines (the prompt end of the screen).
        """
        args = ["capture-pane", "-p", "-J", "-t", self._target(session, window)]
        if with_history:
            args += ["-S", "-" if lines is None else f"-{lines}"]
        out = self._run("capture", session, *args)
        while out and not out[-1].strip():
            out.pop()
        return "\n".join(out if lines is None else out[-lines:])

    # -- recording ------------------------------------------------------------------------

    def start_recording(self, session: str, window: str, path: str | Path) -> None:
        """Pipe everything the pane prints into an asciicast v2 file (`asciinema play`-able).

        A pane already being recorded is left alone, so a re-adopting actor may call this
        again (`pipe-pane -o` alone would toggle: close the open pipe and open none). The
        recorder exits when the pane closes the pipe.
        """
        target = self._target(session, window)
        path = Path(path).absolute()
        if self.display(session, window, "#{pane_pipe}") == "1":
            return
        if path.exists():
            raise TmuxFailed("record", session, f"{path} already exists; choose a new file")
        width, height = self.display(session, window, "#{pane_width} #{pane_height}").split()
        command = self._recorder(path, int(width), int(height))
        self._run("start recording", session, "pipe-pane", "-o", "-t", target, command)

    @staticmethod
    def _recorder(path: Path, width: int, height: int) -> str:
        """The pipe-pane command: the stdlib-only recorder, run without site (-S) to start fast
        and stay small, since every window of every agent has one."""
        path = Path(path).absolute()
        if path.exists():
            raise TmuxFailed("record", path.name, f"{path} already exists; choose a new file")
        script = Path(__file__).resolve().parent / "asciicast.py"
        return shlex.join([sys.executable, "-S", str(script), str(path), str(width), str(height)])

    def stop_recording(self, session: str, window: str) -> None:
        self._run("stop recording", session, "pipe-pane", "-t", self._target(session, window))

"""Service panes: one tmux pane per dev service in an agent's `services` window.

Each pane runs the service under a waiting `/bin/sh` (like every fleet pane, see
`infra.tmux_socket.pausable`), which writes the service's exit status to a file before it exits:
tmux 3.3 does not always reap a pane's process, so `#{pane_dead_status}` can stay empty.
The pane is the session leader of its own process group; the service and whatever it forks
(short of a `setsid`) stay in that group, so a stop or restart can take the whole group.

The window has `remain-on-exit`, so a dead service's last screen stays visible, and the pane
keeps its id (`%N`) across `respawn-pane`: that id is how fleetd addresses it. Everything the
pane prints is appended to a log file by `pipe-pane` (kept across respawns), for log probes
and for people. All of it is set in the same tmux invocation as the split, before tmux reads
the pane's first output.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from infra.tmux import Tmux
from infra.tmux_socket import SEP
from schemas.errors import InvalidName, TmuxFailed

WINDOW = "services"
_PANE = re.compile(r"%[0-9]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORMAT = "#{pane_id} #{pane_pid} #{pane_dead} #{@fleet_service}"


@dataclass(frozen=True)
class Pane:
    pane_id: str  # tmux's %N, stable across respawns
    shell_pid: int  # the waiting /bin/sh; the service is its child
    dead: bool = False
    service: str = ""


def service_argv(command: Sequence[str] | str, status_file: Path) -> list[str]:
    """The pane's argv: a waiting shell that runs `command` and keeps its exit status.

    `command` is an argv (quoted for the shell) or an explicit shell string. The shell traps
    INT and QUIT so Ctrl-C typed in the pane reaches the service without ending the wrapper.
    """
    line = command if isinstance(command, str) else shlex.join(command)
    keep = f"st=$?; echo $st > {shlex.quote(str(status_file))}; exit $st"
    return ["/bin/sh", "-c", f"trap : INT QUIT\n{line}\n{keep}"]


def _env_args(env: Mapping[str, str]) -> list[str]:
    for key in env:
        if not _ENV_KEY.fullmatch(key):
            raise InvalidName(
                "environment variable", key, "use only [A-Za-z0-9_], not a digit first"
            )
    return [f"-e{k}={v}" for k, v in env.items()]


def _pane(pane_id: str) -> str:
    if not _PANE.fullmatch(pane_id):
        raise InvalidName("tmux pane id", pane_id, "expected %<number>")
    return pane_id


def open_pane(
    tmux: Tmux,
    session: str,
    service: str,
    argv: Sequence[str],
    cwd: str | Path,
    env: Mapping[str, str],
    log_file: Path,
) -> Pane:
    """Split a new pane for `service` off the services window and start it there."""
    window = tmux._target(session, WINDOW)
    record = f"cat >> {shlex.quote(str(log_file))}"
    # Without -d the new pane becomes the window's active one, so the commands after the split
    # address it through the window target, in the same command-queue pass as the split.
    out = tmux._run(
        "start service in", session,
        "set-option", "-w", "-t", window, "remain-on-exit", "on", SEP,
        "split-window", "-t", window, "-c", str(cwd), *_env_args(env),
        "-P", "-F", "#{pane_id} #{pane_pid}", *argv, SEP,
        "pipe-pane", "-t", window, record, SEP,
        "select-pane", "-t", window, "-T", service, SEP,
        "set-option", "-p", "-t", window, "@fleet_service", service, SEP,
        "select-layout", "-t", window, "tiled",
    )  # fmt: skip
    pane_id, _, pid = (out[0] if out else "").partition(" ")
    if not _PANE.fullmatch(pane_id) or not pid.isdigit():
        raise TmuxFailed("start service in", session, f"unexpected answer {out!r}")
    return Pane(pane_id, int(pid), service=service)


def respawn_pane(
    tmux: Tmux,
    session: str,
    pane_id: str,
    argv: Sequence[str],
    cwd: str | Path,
    env: Mapping[str, str],
) -> int:
    """Run the service again in its (dead) pane; the new waiting shell's pid."""
    target = _pane(pane_id)
    out = tmux._run(
        "restart service in", session,
        "respawn-pane", "-k", "-t", target, "-c", str(cwd), *_env_args(env), *argv, SEP,
        "display-message", "-p", "-t", target, "#{pane_pid}",
    )  # fmt: skip
    if not out or not out[-1].strip().isdigit():
        raise TmuxFailed("restart service in", session, f"unexpected answer {out!r}")
    return int(out[-1].strip())


def service_panes(tmux: Tmux, session: str) -> dict[str, Pane]:
    """The service panes of a session by service name (for re-adoption after a restart)."""
    lines = tmux._run(
        "list panes of", session, "list-panes", "-t", window_of(session), "-F", _FORMAT
    )
    found: dict[str, Pane] = {}
    for line in lines:
        pane_id, pid, dead, service = [*line.split(" ", 3), "", "", "", ""][:4]
        if service and pid.isdigit():
            found[service] = Pane(pane_id, int(pid), dead == "1", service)
    return found


def window_of(session: str) -> str:
    return f"={session}:={WINDOW}"


def service_pid(shell_pid: int, timeout: float = 60.0) -> int:
    """The service's own pid: the waiting shell's first child (the shell forks it at once).

    Falls back to the shell's pid if the service is already gone or never appears. `timeout`
    is a guard for a loaded machine, not an expected wait: a 5 s one expired while the sandbox
    launcher had not yet `exec`ed the shell, so the launcher's pid was taken for the service's
    (a kill of it then ended the waiting shell before it could write the exit status).
    """
    deadline = time.monotonic() + timeout
    try:
        shell = psutil.Process(shell_pid)
        while True:
            if _launching(shell) and time.monotonic() < deadline:
                time.sleep(0.001)  # the sandbox has not `exec`ed the waiting shell yet
                continue
            children = shell.children()
            if not children and shell.name() != "sh":  # the command `exec`ed in its shell
                return shell_pid
            if children:
                first: int = min(children, key=lambda p: p.create_time()).pid
                return first
            if time.monotonic() >= deadline or shell.status() == psutil.STATUS_ZOMBIE:
                return shell_pid
            time.sleep(0.0005)
    except psutil.NoSuchProcess:
        return shell_pid


def _launching(proc: psutil.Process) -> bool:
    """Whether the pane's process is still the sandbox launcher (infra/sandbox.py), which
    `exec`s the pane's shell under the same pid a few milliseconds after tmux starts it, or
    still tmux's own fork that has not yet `exec`ed the pane's command (on a loaded machine)."""
    try:
        if proc.name().startswith("tmux"):
            return True
        return any(arg.endswith("sandbox.py") for arg in proc.cmdline()[:4])
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def read_status(status_file: Path) -> tuple[int | None, int | None]:
    """(exit code, signal) as the waiting shell saw it; a shell reports death by signal N
    as status 128+N. (None, None) when the shell itself was killed before it could write."""
    try:
        text = status_file.read_text().strip()
    except OSError:
        return None, None
    if not text.isdigit():
        return None, None
    status = int(text)
    return (None, status - 128) if status > 128 else (status, None)


def output_tail(log_file: Path, start: int, limit: int = 256 * 1024) -> str:
    """What the service printed since byte `start` of its log, at most the last `limit` bytes."""
    try:
        with open(log_file, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0

"""What a run of the tests must not leave behind, and the private folder that makes it so.

tmux 3.3 never removes its socket file: not at `kill-server`, not when its last session ends,
not when it is killed with -9 (as the fault tests do). Each private server a test makes
(`tmux -L <name>`) would leave a socket in /tmp/tmux-<uid>/ for good. So the run's servers
live under a TMUX_TMPDIR of its own, set before anything starts: tmux reads it, and so do
infra/tmux.py (through tmux) and actors/agent/monitor.py (`_server_id`); the session's Ray, started
in this process, hands it to its workers, and each private `fleet up` and its Ray daemon
inherit it. At the end of the run the folder goes, with every socket in it.

`leftovers` checks that this held, and that no Chromium profile outlived its test; each thing
it finds is one sentence.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

DEFAULT_TMUX_TMPDIR = Path("/tmp")  # where tmux keeps tmux-<uid>/ without TMUX_TMPDIR
CHROMIUM_TEMP = "org.chromium.Chromium."  # the folder of a profile's SingletonSocket
CHROMIUM_PROFILE = "DevToolsActivePort"  # what a profile started for CDP holds
CHROMIUM_TMPDIR = "fleet-chromium"  # + the run's tag: the TMPDIR of one Chromium
ENDING_GRACE_S = 5.0  # a guard: a tmux server told to exit by the last test is let finish


def run_tag() -> str:
    """This run's mark in the socket names it makes, so a socket that strayed into the shared
    /tmp/tmux-<uid>/ is told apart from other runs' on the same machine."""
    return f"-{os.getpid()}-"


def socket_name(kind: str) -> str:
    """A new tmux socket name of this run: fleet-<kind>-<pid>-<random>."""
    return f"fleet-{kind}{run_tag()}{uuid.uuid4().hex[:8]}"


def tmux_dir(tmpdir: Path) -> Path:
    """Where tmux keeps its sockets under a TMUX_TMPDIR."""
    return tmpdir / f"tmux-{os.getuid()}"


def private_tmux_tmpdir() -> Path:
    """A new TMUX_TMPDIR for this run, set in os.environ (short: a socket path is at most
    107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fleet-tmux-"))
    os.environ["TMUX_TMPDIR"] = str(path)
    return path


def _listening(path: Path) -> bool:
    """A tmux server still answers at `path` (a dead one's socket refuses connections)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _still_listening(sockets: list[Path], grace_s: float) -> list[Path]:
    """Those of `sockets` a server still listens on after up to `grace_s`: `kill-server`
    returns before the server has gone."""
    deadline = time.monotonic() + grace_s
    left = [p for p in sockets if _listening(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _listening(p)]
    return left


def end_live_servers(tmpdir: Path) -> list[str]:
    """End every tmux server still running under `tmpdir`; the names of their sockets."""
    sockets = [p for p in tmux_dir(tmpdir).glob("*") if p.is_socket()]
    live = _still_listening(sockets, ENDING_GRACE_S)
    env = {**os.environ, "TMUX_TMPDIR": str(tmpdir)}
    for path in live:
        subprocess.run(["tmux", "-L", path.name, "kill-server"], env=env, capture_output=True)
    _still_listening(live, ENDING_GRACE_S)
    return sorted(p.name for p in live)


def strays(since: float, shared: Path = DEFAULT_TMUX_TMPDIR) -> list[str]:
    """Sockets with this run's tag in the shared folder, made since `since`: a process that
    dropped TMUX_TMPDIR made them. (Only tagged names count: another run on this machine may
    make a socket called, say, `fleetd` there at any time.)"""
    found = []
    for path in tmux_dir(shared).glob(f"*{run_tag()}*"):
        try:
            made = path.lstat().st_ctime
        except OSError:  # just removed
            continue
        if made >= since:
            found.append(path.name)
    return sorted(found)


def chromium_tmpdir() -> Path:
    """A new TMPDIR for one Chromium of this run, in the system's temp dir (tests/fleet/cdp.py
    says why it is not under the test's tmp_path)."""
    return Path(tempfile.mkdtemp(prefix=CHROMIUM_TMPDIR + run_tag()))


def chromium_left(root: Path) -> list[Path]:
    """Chromium profiles and Chromium temp folders anywhere under `root`, and this run's
    Chromium TMPDIRs."""
    found = sorted(Path(tempfile.gettempdir()).glob(f"{CHROMIUM_TMPDIR}{run_tag()}*"))
    for folder, dirs, files in os.walk(root):
        dirs.sort()  # found in the same order every time
        if CHROMIUM_PROFILE in files:
            found.append(Path(folder))
        found += [Path(folder, d) for d in dirs if d.startswith(CHROMIUM_TEMP)]
    return found


def leftovers(
    tmpdir: Path, since: float, basetemp: Path, shared: Path = DEFAULT_TMUX_TMPDIR
) -> list[str]:
    """What the run left behind, one sentence each; tmux servers still running are ended."""
    problems = []
    live = end_live_servers(tmpdir)
    if live:
        problems.append(f"tmux servers were still running at the end on {', '.join(live)}")
    stray = strays(since, shared)
    if stray:
        problems.append(
            f"tmux sockets {', '.join(stray)} were made in {tmux_dir(shared)} "
            "by a process without the run's TMUX_TMPDIR"
        )
    profiles = chromium_left(basetemp)
    if profiles:
        problems.append(f"Chromium left {', '.join(map(str, profiles))}")
    return problems


def remove(tmpdir: Path) -> None:
    shutil.rmtree(tmpdir, ignore_errors=True)

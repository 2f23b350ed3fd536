"""Group `sandbox`: what an agent's sandbox costs a pane.

`pane_start_ms`: from `tmux new-session` to the pane's shell showing its first prompt, the shell
started through the agent's sandbox as actors/agent/confine.py builds it (bubblewrap's namespaces,
the launcher's user switch when run as root, Landlock with TCP rules); the floor is the same
shell started by tmux with no sandbox, in the same run. The spawn group's `spawn_warm_p50_ms`
includes all of it for a whole agent (three panes).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from actors.agent.confine import FLEETD_ROOT, SYSTEM_READ
from infra import sandbox, sandbox_argv
from infra.tmux_socket import confined, pausable
from tests.perf.common import emit, log, p50

RUNS = 15
UID = 589000  # a uid of the fleet's range (infra/uids.py), for the launcher's switch
PROMPT = "fleet-bench-prompt$ "
GUARD_S = 60.0


def _wait_prompt(socket: str, session: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        shown = subprocess.run(
            ["tmux", "-L", socket, "capture-pane", "-p", "-t", f"={session}:"],
            capture_output=True, text=True,
        )  # fmt: skip
        if PROMPT.strip() in shown.stdout:
            return
    raise AssertionError(f"timed out waiting for the prompt of tmux session {session}")


def _start(socket: str, session: str, cwd: Path, command: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["tmux", "-L", socket, "new-session", "-d", "-s", session, "-c", str(cwd),
         "-e", f"PS1={PROMPT}", *pausable(command)],
        check=True,
    )  # fmt: skip
    _wait_prompt(socket, session)
    ms = (time.perf_counter() - started) * 1000
    subprocess.run(["tmux", "-L", socket, "kill-session", "-t", f"={session}"], check=True)
    return ms


def sandboxed(shell: str, root: Path, worktree: Path) -> str:
    """The shell through the sandbox, as a pane of an agent gets it."""
    as_root = os.geteuid() == 0
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    if as_root:
        for path in (worktree, tmp):
            os.chown(path, UID, UID)
    read = [*SYSTEM_READ, sys.prefix, sys.base_prefix, FLEETD_ROOT]
    write = [str(worktree)]
    landlock = sandbox.landlock_abi() > 0
    spill = root / "spill"
    spill.mkdir(mode=0o700, exist_ok=True)
    if not sandbox_argv.namespaces_work():
        argv = sandbox_argv.argv(
            ["/bin/sh", "-c", shell], ["PATH", "PS1"], read, [*write, "/dev"], spill=str(spill)
        )
        return confined([], shlex.join(argv))
    opts = sandbox_argv.options(
        ["PATH", "PS1"], [*read, "/proc"], [*write, "/dev", "/tmp"], landlock,
        uid=UID if as_root else None, connect=[443], bind=[0],
    )  # fmt: skip
    inner = sandbox_argv.launcher(str(spill), opts)
    prefix = sandbox_argv.namespace_argv(
        read, write, str(tmp), str(worktree), as_root, str(spill), also_read=[inner[-1]]
    )
    return confined([*prefix, *inner, "--"], shell)


async def main() -> None:
    shell = "sh -i"
    with tempfile.TemporaryDirectory(prefix="fleet-bench-sandbox-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        worktree = root / "wt"
        worktree.mkdir()
        socket = f"bench-sandbox-{os.getpid()}"
        command = sandboxed(shell, root, worktree)
        try:
            # A session that stays: with none left the server exits, and the next start raced
            # its exit ("server exited unexpectedly"). Every start below is a new session of a
            # running server, as an agent's is.
            subprocess.run(
                ["tmux", "-L", socket, "new-session", "-d", "-s", "keep", "sleep 3600"], check=True
            )
            _start(socket, "warmup", worktree, command)  # page cache
            bare = [_start(socket, f"b{i}", worktree, shell) for i in range(RUNS)]
            boxed = [_start(socket, f"s{i}", worktree, command) for i in range(RUNS)]
        finally:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
        what = "bubblewrap + user + Landlock" if sandbox_argv.namespaces_work() else "Landlock only"
        log(f"sandbox: {what}")
        emit("pane_start_ms", p50(boxed), "ms", p50(bare), f"{what}; floor: the same shell, bare")

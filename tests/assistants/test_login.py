"""`fleet login TEMPLATE`: its refusals, each one sentence, and a real run in a terminal.

The real run is driven as a person's terminal would be: `fleet login codex` runs in a pane of
a test tmux server (a terminal), attaches that terminal to its own one-off pane of the real
Codex, which shows its sign-in screen; Ctrl-C there leaves it, the one-off tmux server and
its folder go, and what Codex wrote went into the HOME it was given (the user's, where an
agent's private home is seeded from), with no login saved (none was given).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from infra.tmux import Tmux
from tests.fleetcli import REPO, fleet_cli

if TYPE_CHECKING:
    from tests.assistants.install import Installs

GUARD_S = 120.0
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def refused(home: Path, path: str, *args: str) -> str:
    done = fleet_cli({"HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}, "login", *args)
    assert done.returncode == 2 and done.stdout == "", done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


def test_refusals_are_one_sentence(assistants: Installs, tmp_path: Path) -> None:
    system = f"{Path(sys.executable).parent}:{SYSTEM_PATH}"
    assert refused(tmp_path, system, "nope").startswith("fleet: there is no template 'nope'")
    said = refused(tmp_path, system, "shell")
    assert "template shell runs no assistant" in said and "codex" in said, said
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    said = refused(tmp_path, str(empty), "codex")
    assert "codex is not installed" in said and "npm install -g @openai/codex" in said, said
    said = refused(tmp_path, f"{assistants.npm_bin}:{system}", "codex")  # installed; no tty
    assert "fleet login needs a terminal" in said, said


@pytest.fixture
def terminal() -> Iterator[Tmux]:
    server = Tmux(f"fleet-term-{uuid.uuid4().hex[:8]}")
    yield server
    server.kill_server()


def test_a_real_login_pane_shows_codex_sign_in_and_goes_when_it_quits(
    assistants: Installs, terminal: Tmux, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": f"{assistants.npm_bin}:{SYSTEM_PATH}",
           "TERM": "xterm-256color", "LANG": "C.UTF-8"}  # fmt: skip
    if "TMUX_TMPDIR" in os.environ:  # the run's: its one-off tmux socket goes with the run's
        env["TMUX_TMPDIR"] = os.environ["TMUX_TMPDIR"]
    temp = tmp_path / "tmp"  # its folder is made here: in the shared /tmp, another run's could be
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    line = shlex.join(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
         sys.executable, "-m", "services.cli", "login", "codex"]
    )  # fmt: skip
    terminal.create_session("term", REPO, env, windows=("agent",), command_for_agent=line)
    screen = wait(terminal, lambda s: "Sign in with ChatGPT" in s, "Codex's sign-in screen")
    assert "log in, then quit the assistant" not in screen  # the client covers the terminal
    inner = login_servers(home)
    assert len(inner) == 1, inner  # its own tmux server, running as the user with that HOME
    folders = list(temp.glob("fleet-login-codex-*"))
    for _ in range(3):  # Ctrl-C leaves the sign-in screen unsaved ("ctrl + c again to quit")
        terminal.send_keys("term", "agent", ["C-c"])
        time.sleep(1.0)
        if terminal.pane_dead("term", "agent"):
            break
    wait(terminal, lambda s: "fleet: codex: done" in s, "fleet login to end", dead_ok=True)
    deadline = time.monotonic() + GUARD_S
    while login_servers(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not login_servers(home), "the one-off tmux server was left"
    left = started_under(home)  # Codex's background app server, a daemon, was left running
    assert not left, [p.info["cmdline"] for p in left]
    assert folders and not any(f.exists() for f in folders), folders
    assert (home / ".codex").is_dir()  # it ran in the user's HOME, not an agent's
    assert not (home / ".codex" / "auth.json").exists()  # and saved no login


def wait(tmux: Tmux, ok: Callable[[str], bool], what: str, dead_ok: bool = False) -> str:
    deadline = time.monotonic() + GUARD_S
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.capture("term", "agent", None, False)
        if ok(screen):
            return screen
        if not dead_ok and tmux.pane_dead("term", "agent"):
            pytest.fail(f"the terminal's command exited while waiting for {what}:\n{screen}")
        time.sleep(0.3)
    pytest.fail(f"waited {GUARD_S:.0f} s for {what}; the terminal shows:\n{screen}")


def started_under(home: Path) -> list[psutil.Process]:
    """Processes running a program from under `home` (what the assistant installed there)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or [""]
        if cmd[0].startswith(f"{home}/"):
            found.append(proc)
    return found


def login_servers(home: Path) -> list[psutil.Process]:
    """The tmux servers `fleet login` started (socket fleet-login-<pid>) with this HOME."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            ours = any(a.startswith("-Lfleet-login-") for a in cmd)
            if ours and proc.environ().get("HOME") == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found

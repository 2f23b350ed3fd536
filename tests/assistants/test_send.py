# The assistants' own glyphs (❯ ›) are stripped from the lines they draw.
# ruff: noqa: RUF001, RUF003
"""A multi-line `send` lands as one input, newlines and all, and its Enter submits it, in each
real assistant and in a shell (issue 16, "Input that arrives as typed").

Each assistant is started at its prompt as tests/assistants/test_stop.py starts it (a private
tmux server, a throwaway HOME seeded past its first-run dialogs, `env -i`), and the text goes
in by the path an agent's `send` takes (actors/agent/keyboard.py with the builtin profile). None is
logged in, so "submitted" is read from what each does with a prompt it cannot answer: the two
lines shown one under the other as the prompt sent, and after them a reply or a status that
only a submitted prompt brings (Claude's "Please run /login", Codex's reconnecting or startup
wait, Gemini's spinner or error, Aider's wait for its model or its connection error), with the
input box empty again where it has one. Typed as keys with its Enter at once (the old `send`),
Codex kept the text in its box: that case is here too, so this test can tell the two apart.

At the end, `fleet send` through a real fleet: a multi-line command into a shell agent's
sandboxed pane runs as one command.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from actors.agent import keyboard
from infra import sandbox_argv
from infra.tmux import Tmux
from schemas.assistants import classify
from schemas.builtin_profiles import BUILTIN
from schemas.states import Activity
from tests.assistants.test_stop import (
    QUIET,
    _git_repo,
    claude_trusted,
    codex_trusted,
    gemini_trusted,
)
from tests.fleet.helpers import command, spawn, until
from tests.fleetcli import fleet_cli

if TYPE_CHECKING:
    from nats.aio.client import Client

    from tests.assistants.install import Installs
    from tests.conftest import Fleet

GUARD_S = 120.0  # a real assistant starting (or giving up on its network) on a busy machine
FIRST, SECOND = "fleet-send-alpha", "fleet-send-omega"
TEXT = f"{FIRST}\n{SECOND}"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def aider_ready(home: Path, repo: Path) -> None:
    (repo / ".gitignore").write_text(".aider*\n")  # else it asks to add it first


@dataclass
class Case:
    profile: str
    bin_of: str  # the Installs field holding its PATH folder
    seed: Callable[[Path, Path], None]
    submitted: str  # a regex of the screen once the prompt was sent (after the two lines)
    env: dict[str, str] = field(default_factory=dict)
    box: str = ""  # the empty input box, shown again once the prompt left it
    # Its prompt: Claude's, logged out, shows "Not logged in" in its status line beside it.
    ready: Activity = Activity.READY


CASES = {
    "claude-code": Case("claude-code", "npm_bin", claude_trusted, r"Please run /login",
                        ready=Activity.LOGIN_REQUIRED),
    "codex": Case("codex", "npm_bin", codex_trusted,
                  r"Reconnecting|Stream disconnected|Waiting for startup|esc to interrupt",
                  box="Ask Codex to do anything"),
    "gemini": Case("gemini", "npm_bin", lambda h, r: gemini_trusted(h, r, key_chosen=True),
                   r"esc to cancel|API key not valid|[Ee]rror|fetch failed",
                   env={"GEMINI_API_KEY": "not-a-key"}, box="Type your message"),
    "aider": Case("aider", "venv_bin", aider_ready,
                  r"Waiting for|Connection error|APIConnectionError|Retrying",
                  env={"OPENAI_API_KEY": "sk-not-a-key", "AIDER_SHOW_RELEASE_NOTES": "false",
                       "AIDER_CHECK_UPDATE": "false", "AIDER_ANALYTICS": "false"}),
}  # fmt: skip


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(f"fleet-send-{uuid.uuid4().hex[:8]}")
    yield server
    server.kill_server()


def start(tmux: Tmux, tmp_path: Path, assistants: Installs, case: Case) -> str:
    """The assistant at its prompt in session "fleet-s1"; returns that screen."""
    profile = BUILTIN[case.profile]
    home, repo = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    _git_repo(repo)
    case.seed(home, repo)
    env = {"HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8", **QUIET, **case.env}
    env["PATH"] = f"{getattr(assistants, case.bin_of)}:{SYSTEM_PATH}"
    program, *flags = shlex.split(profile.command)
    executable = str(getattr(assistants, case.bin_of) / program)
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    tmux.create_session(
        "fleet-s1", repo, env, command_for_agent=shlex.join([*clean, executable, *flags])
    )
    return wait_screen(tmux, lambda s: classify(s, profile) is case.ready, "its prompt", 3.0)


def wait_screen(tmux: Tmux, ok: Callable[[str], bool], what: str, still_s: float = 0.0) -> str:
    """The screen once `ok` holds (and has held for `still_s`: a prompt drawn is not yet a
    prompt that takes keys); fails saying what was awaited, with the screen."""
    deadline = time.monotonic() + GUARD_S
    screen, since = "", None
    while time.monotonic() < deadline:
        screen = tmux.capture("fleet-s1", "agent", None, False)
        if ok(screen):
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= still_s:
                return screen
        else:
            since = None
        if tmux.pane_dead("fleet-s1", "agent"):
            pytest.fail(f"the assistant exited while waiting for {what}:\n{screen}")
        time.sleep(0.2)
    pytest.fail(f"waited {GUARD_S:.0f} s for {what}; the screen:\n{screen}")


def sent_as_one(screen: str, case: Case) -> bool:
    """The two lines one under the other (as one prompt), then what a sent prompt brings, and
    the input box empty again where the assistant has one."""
    lines = [ln.strip(" │┃>❯›") for ln in screen.splitlines()]
    at = next((i for i, ln in enumerate(lines[:-1]) if ln.endswith(FIRST)), None)
    if at is None or not lines[at + 1].strip().startswith(SECOND):
        return False
    after = "\n".join(screen.splitlines()[at + 2 :])
    return bool(re.search(case.submitted, after)) and (not case.box or case.box in after)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_multi_line_send_is_one_input_and_is_submitted(
    name: str, assistants: Installs, tmux: Tmux, tmp_path: Path
) -> None:
    case = CASES[name]
    before = start(tmux, tmp_path, assistants, case)
    profile = BUILTIN[case.profile]
    asyncio.run(keyboard.enter_text(tmux, "fleet-s1", "agent", profile, TEXT, before=before))
    wait_screen(tmux, lambda s: sent_as_one(s, case), f"{name} to take the two lines as one prompt")


def test_a_multi_line_send_into_a_shell_runs_as_one_command(tmux: Tmux, tmp_path: Path) -> None:
    """A `for` loop over three lines: it runs only if the lines arrive as one command (each
    line on its own would be a syntax error, then a stray `done`)."""
    profile = BUILTIN["shell"]
    env = {"HOME": str(tmp_path), "PATH": SYSTEM_PATH, "TERM": "xterm-256color"}
    tmux.create_session("fleet-s1", tmp_path, env, command_for_agent=profile.command)
    wait_screen(tmux, lambda s: classify(s, profile) is Activity.READY, "a prompt")
    loop = "for w in alpha omega; do\n  echo got-$w\ndone"
    asyncio.run(keyboard.enter_text(tmux, "fleet-s1", "agent", profile, loop))
    screen = wait_screen(tmux, lambda s: "got-omega" in s.splitlines()[-2:][0], "the loop's output")
    out = [ln for ln in screen.splitlines() if ln.startswith("got-")]
    assert out == ["got-alpha", "got-omega"], screen
    assert "syntax error" not in screen, screen


def test_text_ending_with_a_semicolon_is_text(tmux: Tmux, tmp_path: Path) -> None:
    """tmux reads an argument ending in ";" as a command separator; a lone ";" was sent as one
    (it is the very object fleetd used for its separators)."""
    profile = BUILTIN["shell"]
    env = {"HOME": str(tmp_path), "PATH": SYSTEM_PATH, "TERM": "xterm-256color"}
    tmux.create_session("fleet-s1", tmp_path, env, command_for_agent=profile.command)
    wait_screen(tmux, lambda s: classify(s, profile) is Activity.READY, "a prompt")
    for text in ("echo semi > a.txt;", ";", "echo two >> a.txt;"):
        tmux.paste_text("fleet-s1", "agent", text, enter=True)
    wait_screen(
        tmux,
        lambda s: (tmp_path / "a.txt").exists() and "two" in (tmp_path / "a.txt").read_text(),
        "a.txt",
    )
    assert (tmp_path / "a.txt").read_text() == "semi\ntwo\n"


@pytest.mark.skipif(not sandbox_argv.namespaces_work(), reason="bubblewrap cannot make namespaces")
async def test_fleet_send_of_a_multi_line_command_runs_it_once_in_a_shell_agent(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """Through the CLI and the agent's actor, into its sandboxed pane: the loop's lines as one
    command (its output once per word, no syntax error)."""
    reply = await spawn(nc, str(repo), "sh1", template="shell")
    assert reply.get("ok"), reply
    tmux, shell = Tmux(fleet.tmux_socket), BUILTIN["shell"]

    async def screen() -> str:
        return await asyncio.to_thread(tmux.capture, "fleet-sh1", "agent", None, False)

    try:
        await until(
            lambda: _holds(screen, lambda s: classify(s, shell) is Activity.READY),
            "sh1's prompt", GUARD_S,
        )  # fmt: skip
        loop = "for w in alpha omega; do\n  echo got-$w\ndone"
        done = await asyncio.to_thread(fleet_cli, fleet.env, "send", "sh1", loop)
        assert done.returncode == 0, done
        await until(
            lambda: _holds(screen, lambda s: "got-omega" in s), "the loop's output", GUARD_S
        )
        shown = await screen()
        assert [ln for ln in shown.splitlines() if ln.startswith("got-")] == [
            "got-alpha",
            "got-omega",
        ], shown
        assert "syntax error" not in shown, shown
    finally:
        await command(nc, "sh1", "kill", timeout=GUARD_S)


async def _holds(screen: Callable[[], Awaitable[str]], ok: Callable[[str], bool]) -> bool:
    return ok(await screen())

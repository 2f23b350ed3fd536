"""The real assistants start inside an agent's sandbox wherever they are installed (issues 14
and 16): Claude Code, Codex and Gemini CLI from npm in a folder (its `node_modules/.bin` on
PATH), Gemini CLI from a global npm prefix, Aider from a venv and from `uv tool`.

Each is spawned with its builtin template and the PATH given at spawn, on a real fleet with no
login and no network but the registries. It must run in its pane as the agent's own user (not
root), draw its first screen, leave `fleet doctor --sandbox` passing, and Codex must start its
background daemon (its folder in /tmp, the agent's own). The first screen of each is kept under
tests/assistants/screens/ (written when missing, or always with FLEET_SAVE_SCREENS=1): the screen
profiles are fixed against them. An assistant that is not installed is refused at spawn with how
to install it, and leaves no agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from infra import sandbox_argv
from infra.eventstore import EventStore
from infra.tmux import Tmux
from schemas import subjects
from tests.assistants.install import VERSIONS, Installs
from tests.conftest import Fleet
from tests.fleet.helpers import command, request, spawn, until
from tests.fleetcli import fleet_cli

pytestmark = pytest.mark.skipif(
    not sandbox_argv.namespaces_work(), reason="bubblewrap cannot make namespaces on this machine"
)
AS_ROOT = os.geteuid() == 0
GUARD_S = 120.0  # a real assistant starting on a loaded 2-core machine
SCREENS = Path(__file__).with_name("screens")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Way:
    program: str  # the executable the template's command starts
    template: str  # the builtin template
    how: str  # how it was installed
    bin_of: str  # the Installs field holding its PATH folder
    capture: bool  # whether this way's first screen is the one kept

    @property
    def agent(self) -> str:
        return f"{self.program}-{self.how}"


WAYS = [
    Way("claude", "claude-code", "npm-folder", "npm_bin", True),
    Way("codex", "codex", "npm-folder", "npm_bin", True),
    Way("gemini", "gemini", "npm-folder", "npm_bin", True),
    Way("gemini", "gemini", "npm-global", "npm_global_bin", False),
    Way("aider", "aider", "venv", "venv_bin", True),
    Way("aider", "aider", "uv-tool", "uv_tool_bin", False),
]


def assistant_processes(tmux: Tmux, session: str, executable: Path) -> list[psutil.Process]:
    """The processes under the session's panes that run `executable` (the binary itself, or
    an interpreter with it as its script), matched by real path."""
    real = os.path.realpath(executable)
    found = []
    for pid in tmux.pane_pids(session):
        try:
            below = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in below:
            try:
                used = [proc.exe(), *proc.cmdline()]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if any(os.path.isabs(u) and os.path.realpath(u) == real for u in used):
                found.append(proc)
    return found


def ran_as(tmux: Tmux, session: str, executable: Path, home: Path, since: float) -> list[int]:
    """The users `executable` runs as in the session; once its pane has died (Claude Code
    exits at its first-run check offline, maybe before it is seen), the owners of what it
    wrote in the agent's home since `since` (the seeded login files keep their old times)."""
    found = []
    for proc in assistant_processes(tmux, session, executable):
        with contextlib.suppress(psutil.Error):
            found.append(proc.uids().real)
    if found or not tmux.pane_dead(session, "agent"):
        return found
    written = [p.lstat() for p in home.rglob("*")]
    return [st.st_uid for st in written if st.st_mtime >= since]


def tree(tmux: Tmux, session: str) -> str:
    """The processes under the session's panes, for a failure's message."""
    lines = []
    for pid in tmux.pane_pids(session):
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                lines.append(f"{proc.pid} uid={proc.uids().real} {shlex.join(proc.cmdline())}")
    return "\n".join(lines)


async def first_screen(tmux: Tmux, session: str, what: str) -> str:
    """The agent window's screen once it shows text and has not changed for 3 s (or, for a
    screen that keeps moving, as it is 30 s after its first text)."""

    def shown() -> str:
        return tmux.capture(session, "agent", None, with_history=False)

    async def drawn() -> str:
        return (await asyncio.to_thread(shown)).strip()

    last = await until(drawn, f"{what} to draw its first screen", GUARD_S)
    deadline, still_since = time.monotonic() + 30, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < 3:
        await asyncio.sleep(0.5)
        now = await drawn()
        if now != last:
            last, still_since = now, time.monotonic()
    return await asyncio.to_thread(shown)


async def seen_in_sandbox(tmux: Tmux, session: str, worktree: str, folder: Path) -> list[str]:
    """Which entries of `folder` (as this side sees them) exist for a shell of the agent (its
    services window, in the same sandbox as the assistant); the answer goes through the
    worktree, the one place it may write. (Landlock refuses to list the folder itself.)"""
    out = Path(worktree) / f".seen-{folder.name}"
    names = " ".join(shlex.quote(p.name) for p in sorted(folder.iterdir()))
    where = shlex.quote(str(folder))
    line = f"for n in {names}; do [ -e {where}/$n ] && echo $n; done > {out.name}"
    line += f"; echo END >> {out.name}"
    await asyncio.to_thread(tmux.send_text, session, "services", line)

    async def listed() -> bool:
        return out.exists() and out.read_text().endswith("END\n")

    await until(listed, f"the agent's shell to look into {folder}", GUARD_S)
    return out.read_text().split()[:-1]


def keep_screen(way: Way, screen: str) -> None:
    path = SCREENS / f"{way.template}-{VERSIONS[way.program]}-first.txt"
    if way.capture and (os.environ.get("FLEET_SAVE_SCREENS") == "1" or not path.exists()):
        SCREENS.mkdir(exist_ok=True)
        path.write_text(screen.rstrip() + "\n")


@pytest.mark.parametrize("way", WAYS, ids=[w.agent for w in WAYS])
async def test_starts_in_its_sandbox(
    way: Way, assistants: Installs, fleet: Fleet, nc: Client, repo: Path
) -> None:
    folder: Path = getattr(assistants, way.bin_of)
    executable = folder / way.program
    assert executable.exists(), f"{way.how} did not put {way.program} in {folder}"
    env = {"PATH": f"{folder}:{SYSTEM_PATH}"}
    started = time.time()
    reply = await spawn(nc, str(repo), way.agent, template=way.template, env=env)
    assert reply.get("ok") and reply["agent"]["lifecycle"] == "RUNNING", reply
    tmux, session = Tmux(fleet.tmux_socket), f"fleet-{way.agent}"
    try:
        what = f"{way.program} ({way.how}) in agent {way.agent}'s pane"

        home = fleet.state_dir / "homes" / way.agent

        async def users() -> list[int]:
            return await asyncio.to_thread(ran_as, tmux, session, executable, home, started)

        try:
            uids = await until(users, f"{what} to run", GUARD_S)
        except AssertionError as e:
            shown = await asyncio.to_thread(tmux.capture, session, "agent", None, False)
            raise AssertionError(f"{e}; its screen:\n{shown}\n{tree(tmux, session)}") from None
        for uid in uids:
            assert uid != 0 if AS_ROOT else uid == os.getuid(), uids
            if AS_ROOT:
                assert uid > 65535, uids  # the agent's own, from the fleet's range
        screen = await first_screen(tmux, session, what)
        for failed in ("Permission denied", ": not found", "No such file or directory", "EACCES"):
            assert failed not in screen, screen  # what a sandbox missing a grant shows
        keep_screen(way, screen)
        if way.program == "codex":  # its daemon's folder, made in the agent's own /tmp
            tmp = fleet.state_dir / "tmp" / way.agent
            await until(
                lambda: asyncio.to_thread(lambda: list(tmp.glob("codex-daemon-*"))),
                f"codex's daemon folder in agent {way.agent}'s /tmp ({tmp})", GUARD_S,
            )  # fmt: skip
        # Exactly its install is there: of the cache folder, only the part this way made.
        mine = folder.relative_to(assistants.root).parts[0]
        seen = await seen_in_sandbox(tmux, session, reply["agent"]["worktree"], assistants.root)
        assert seen == [mine], seen
        doctor = await asyncio.to_thread(fleet_cli, fleet.env, "doctor", "--sandbox", way.agent)
        assert doctor.returncode == 0 and "every probe held" in doctor.stdout, doctor
    finally:
        await command(nc, way.agent, "kill", timeout=GUARD_S)


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        ("claude-code", "claude is not installed (not on PATH): npm install -g @anthropic-ai/"),
        ("codex", "codex is not installed (not on PATH): npm install -g @openai/codex"),
        ("gemini", "gemini is not installed (not on PATH): npm install -g @google/gemini-cli"),
        ("aider", "aider is not installed (not on PATH): pipx install aider-chat"),
    ],
)  # fmt: skip
async def test_one_not_installed_is_refused_with_how_to_install_it_and_leaves_no_agent(
    template: str, refusal: str, fleet: Fleet, nc: Client, repo: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    name = f"none-{template}"
    for _ in range(2):  # the pool actor it took is let go, and the name stays free
        reply = await spawn(nc, str(repo), name, template=template, env={"PATH": str(empty)})
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == "not_installed", reply
        assert reply["error"]["message"].startswith(refusal), reply
    assert await EventStore(nc).last_seq(name) == 0
    listed = await request(nc, subjects.control("list"), {"removed": True}, timeout=30)
    assert name not in [a["id"] for a in listed["agents"]]
    assert not [w for w in (fleet.worktree_root).glob(f"*{name}*")], "a worktree was made"

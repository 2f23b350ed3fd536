"""A stop at each real assistant's first screens answers nothing and leaves nothing behind.

Each case starts a real assistant (installed by tests/assistants/install.py) in a pane of a
private tmux server, with a throwaway HOME and a fresh git repository, no login and no network:
the screens a new user's first agent shows. Once the screen reads as expected, every file in
HOME and the repository is fingerprinted; then the stop does what an agent's stop does
(actors/agent/quitting.py, then SIGTERM/SIGKILL of what is left and the session closed), and the
files must be byte-identical, and no process of it (the pane's tree, or anything that runs
with that HOME, such as Codex's background app server) may be left.

Left out of the comparison: what an assistant writes for itself on any run or exit, and
while it runs (logs, sqlite state, telemetry, session transcripts, caches, Gemini's counters
of tips shown), and of Claude's ~/.claude.json all but the keys that record a decision (it
rewrites plugin usage, release notes seen and per-project statistics on its own). Everything
that records a decision (trust, an API key, an OAuth code, a login) is compared.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from actors.agent.quitting import quit_assistant
from infra.tmux import Tmux
from schemas.assistants import AssistantProfile, classify, detail
from schemas.builtin_profiles import BUILTIN
from schemas.states import Activity

if TYPE_CHECKING:
    from tests.assistants.install import Installs

# The cached install of the real assistants (and its `assistants` fixture) lands separately.
pytest.importorskip("tests.assistants.install", reason="tests/assistants/install.py is missing")

A = Activity
GUARD_S = 120.0  # a cold node start on a busy 2-core machine takes seconds; never this long
BUDGET_S = 8.0  # the stop's polite time (the agent's polite_timeout_s; more, for a busy CI)
VOLATILE = (
    ".sqlite",
    ".sqlite-shm",
    ".sqlite-wal",
    "/logs/",
    "/log/",
    "/telemetry/",
    "/sessions/",
    "/session-env/",
    "/shell-snapshots/",
    "/projects/",
    "/todos/",
    "/statsig/",
    "/backups/",
    "/.npm/",
    "/tmp/",
    "/.cache/",
    "history.jsonl",
    ".aider.chat.history.md",
    ".aider.input.history",
    ".aider.tags.cache",
    "/.gemini/state.json",  # counters: warnings and tips shown
    "/installation_id",  # Gemini's and Codex's, written when they get round to it
    "/.claude/.update.lock",  # its auto-updater, which runs beside the screen
    "/.claude/.last-update-result.json",
    "/.codex/.tmp/",  # the plugin marketplace's staging checkout
    "/.gemini/projects.json",  # a folder's short name for its chats
)
# ~/.claude.json: the keys that record a decision (see `_claude_decisions`).
CLAUDE_DECISIONS = (
    "hasCompletedOnboarding",
    "oauthAccount",
    "primaryApiKey",
    "customApiKeyResponses",
    "hasTrustDialogAccepted",
)
CLAUDE_PROJECT_DECISIONS = ("hasTrustDialogAccepted", "allowedTools", "hasTrustDialogHooksAccepted")


# Claude Code updates its own install in the background when the registry has a newer one
# (2.1.332 to 2.1.337 during a run): not in a test of the pinned version.
QUIET = {"DISABLE_AUTOUPDATER": "1"}


@dataclass
class Case:
    """One assistant at one first screen: how to start it there and what the screen reads."""

    profile: str
    where: Callable[[Installs], Path]  # the PATH folder the assistant is installed in
    expect: A
    asks: str  # a word of the question on screen
    seed: Callable[[Path, Path], None] = lambda home, repo: None  # files before it starts
    env: dict[str, str] = field(default_factory=dict)
    keys: tuple[str, ...] = ()  # pressed (each then a look) to reach the screen


def npm(found: Installs) -> Path:
    return found.npm_bin


def venv(found: Installs) -> Path:
    return found.venv_bin


def claude_onboarded(home: Path, repo: Path) -> None:
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))


def claude_trusted(home: Path, repo: Path) -> None:
    projects = {str(repo): {"hasTrustDialogAccepted": True}}
    (home / ".claude.json").write_text(
        json.dumps({"hasCompletedOnboarding": True, "projects": projects})
    )


def codex_key(home: Path, repo: Path) -> None:
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text('{"OPENAI_API_KEY": "sk-test-not-a-key"}')


def codex_trusted(home: Path, repo: Path) -> None:
    codex_key(home, repo)
    trusted = f'[projects."{repo}"]\ntrust_level = "trusted"\n'
    (home / ".codex" / "config.toml").write_text(trusted)


def gemini_trusted(home: Path, repo: Path, key_chosen: bool = False) -> None:
    (home / ".gemini").mkdir()
    (home / ".gemini" / "trustedFolders.json").write_text(json.dumps({str(repo): "TRUST_FOLDER"}))
    if key_chosen:
        settings = {"security": {"auth": {"selectedType": "gemini-api-key"}}}
        (home / ".gemini" / "settings.json").write_text(json.dumps(settings))


CASES = {
    "claude-trust-dialog": Case("claude-code", npm, A.AWAITING_INPUT, "trust",
                                seed=claude_onboarded),
    "claude-not-logged-in": Case("claude-code", npm, A.LOGIN_REQUIRED, "Not logged in",
                                 seed=claude_trusted),
    "claude-paste-code": Case("claude-code", npm, A.LOGIN_REQUIRED, "Paste code",
                              seed=claude_trusted, keys=("/login", "Enter", "Enter")),
    "codex-sign-in": Case("codex", npm, A.LOGIN_REQUIRED, "Codex"),
    "codex-api-key": Case("codex", npm, A.LOGIN_REQUIRED, "API key",
                          keys=("Down", "Down", "Enter", "Enter")),
    "codex-trust-dialog": Case("codex", npm, A.AWAITING_INPUT, "Trust this folder",
                               seed=codex_key),
    "gemini-trust-dialog": Case("gemini", npm, A.AWAITING_INPUT, "trust"),
    "gemini-auth-menu": Case("gemini", npm, A.LOGIN_REQUIRED, "authenticate",
                             seed=gemini_trusted),
    "gemini-api-key": Case("gemini", npm, A.LOGIN_REQUIRED, "API Key",
                           seed=lambda h, r: gemini_trusted(h, r, key_chosen=True),
                           keys=("Enter",)),
    "aider-gitignore": Case("aider", venv, A.AWAITING_INPUT, ".gitignore"),
    # At the prompt the quit text is typed, and then Enter on its own.
    "codex-ready": Case("codex", npm, A.READY, "Ask Codex", seed=codex_trusted),
    "gemini-ready": Case("gemini", npm, A.READY, "Type your message",
                         seed=lambda h, r: gemini_trusted(h, r, key_chosen=True),
                         env={"GEMINI_API_KEY": "not-a-key"}),
}  # fmt: skip


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(f"fleet-stop-{uuid.uuid4().hex[:8]}")
    yield server
    server.kill_server()


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_stop_at_a_first_screen_answers_nothing(
    name: str, assistants: Installs, tmux: Tmux, tmp_path: Path
) -> None:
    case, profile = CASES[name], BUILTIN[CASES[name].profile]
    home, repo = tmp_path / "home", tmp_path / "repo"
    home.mkdir()
    _git_repo(repo)
    case.seed(home, repo)
    session = "fleet-s1"
    env = {"HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8", **QUIET, **case.env}
    env["PATH"] = f"{assistants.npm_bin}:{assistants.venv_bin}:/usr/local/bin:/usr/bin:/bin"
    program, *flags = shlex.split(profile.command)  # the profile's own flags (--no-daemon)
    # Only this environment, as fleetd's sandbox gives a pane (a tmux pane also gets its
    # server's, here the test run's: with CI=true Gemini runs headless and exits at once).
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    command = shlex.join([*clean, str(case.where(assistants) / program), *flags])
    tmux.create_session(session, repo, env, command_for_agent=command)
    screen = _reach(tmux, session, profile, case)
    assert case.asks in detail(screen, profile, classify(screen, profile)) or case.asks in screen
    before = fingerprint(home, repo)
    pid = _agent_pid(tmux, session)
    mine = _processes_of(pid, home)

    exited = asyncio.run(quit_assistant(tmux, session, profile, pid, BUDGET_S))
    last = tmux.capture(session, "agent", None, False)
    tmux.end_session(session, 5.0, 10.0)  # what `_close` does with what is left

    after = fingerprint(home, repo)
    changed = {p: (before.get(p), after.get(p)) for p in before.keys() | after.keys()
               if before.get(p) != after.get(p)}  # fmt: skip
    assert not changed, f"{name}: the stop changed the user's files: {changed}\n{screen}"
    _wait_gone(mine | _processes_of(None, home), name)
    assert exited, f"{name}: it had to be ended with signals; its screen then:\n{last}"


def _reach(tmux: Tmux, session: str, profile: AssistantProfile, case: Case) -> str:
    """Press the case's keys, each once the screen has settled; then wait until the screen
    reads as the case expects. Returns that screen."""
    for key in case.keys:
        _wait_screen(tmux, session, lambda s: classify(s, profile) in (A.READY, *_WAITING), key)
        time.sleep(1.0)  # a menu drawn is not yet a menu that takes keys
        if key.startswith("/"):
            tmux.send_text(session, "agent", key, enter=False)
        else:
            tmux.send_keys(session, "agent", [key])
    return _wait_screen(
        tmux, session, lambda s: classify(s, profile) is case.expect and case.asks in s,
        f"{case.profile} to show {case.expect} asking about {case.asks!r}",
    )  # fmt: skip


_WAITING = (A.AWAITING_INPUT, A.LOGIN_REQUIRED)


def _wait_screen(tmux: Tmux, session: str, ok: Callable[[str], bool], what: str) -> str:
    deadline = time.monotonic() + GUARD_S
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.capture(session, "agent", None, False)
        if ok(screen):
            time.sleep(1.5)  # it settles: the files it writes at start are written
            return tmux.capture(session, "agent", None, False)
        if tmux.pane_dead(session, "agent"):
            pytest.fail(f"the assistant exited while waiting for {what}:\n{screen}")
        time.sleep(0.2)
    pytest.fail(f"waited {GUARD_S:.0f} s for {what}; the screen:\n{screen}")


def fingerprint(*roots: Path) -> dict[str, str]:
    """The text (or sha256, if large) of every file under the roots that records something
    (see the module doc)."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = "/" + str(path.relative_to(root.parent))
            if not path.is_file() or "/.git/" in rel or any(v in rel for v in VOLATILE):
                continue
            data = path.read_bytes()
            if path.name == ".claude.json":
                data = _claude_decisions(data)
            # small files are kept whole, so a failure shows what changed in them
            found[rel] = data.decode(errors="replace") if len(data) < 4096 else _sha(data)
    return found


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _claude_decisions(data: bytes) -> bytes:
    """What ~/.claude.json records of a person's decisions (onboarding, a login, an API key
    accepted, a folder trusted, tools allowed); Claude rewrites the rest on its own while it
    runs (plugin usage, release notes seen, marketplace retries, per-project statistics)."""
    try:
        config = json.loads(data)
    except ValueError:
        return data
    kept = {k: config[k] for k in CLAUDE_DECISIONS if k in config}
    kept["projects"] = {
        path: {k: v for k, v in project.items() if k in CLAUDE_PROJECT_DECISIONS}
        for path, project in (config.get("projects") or {}).items()
    }
    return json.dumps(kept, sort_keys=True, indent=0).encode()


def _agent_pid(tmux: Tmux, session: str) -> int:
    (pid,) = [pid for window, pid in tmux.live_panes(session) if window == "agent"]
    return pid


def _processes_of(pid: int | None, home: Path) -> set[psutil.Process]:
    """The pane's process tree, and every process of ours that runs with this HOME."""
    found: set[psutil.Process] = set()
    if pid is not None:
        try:
            root = psutil.Process(pid)
            found |= {root, *root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    for proc in psutil.process_iter():
        try:
            if proc.uids().real == os.getuid() and proc.environ().get("HOME") == str(home):
                found.add(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _wait_gone(procs: set[psutil.Process], name: str) -> None:
    deadline = time.monotonic() + GUARD_S
    left = procs
    while time.monotonic() < deadline:
        left = {p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
        if not left:
            return
        time.sleep(0.2)
    what = ", ".join(f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left)
    for proc in left:  # a failed test leaves nothing either
        proc.kill()
    pytest.fail(f"{name}: the stop left processes behind: {what}")


def _git_repo(repo: Path) -> None:
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True)


def test_a_shell_asking_for_a_password_is_not_given_the_quit_text(
    tmux: Tmux, tmp_path: Path
) -> None:
    """bash at a password prompt: its cancel key (Ctrl-C) first, then `exit` at the prompt.
    The old stop's `exit` and Enter became the password."""
    profile = BUILTIN["shell"]
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TERM": "xterm-256color"}
    tmux.create_session("fleet-s2", tmp_path, env, command_for_agent=profile.command)
    asks = 'read -s -p "Password: " p; echo "got:$p" > typed.txt'
    _wait_screen(tmux, "fleet-s2", lambda s: classify(s, profile) is A.READY, "a prompt")
    tmux.send_text("fleet-s2", "agent", asks)
    screen = _wait_screen(
        tmux, "fleet-s2", lambda s: classify(s, profile) is A.AWAITING_INPUT, "the password"
    )
    assert detail(screen, profile, A.AWAITING_INPUT) == "Password:"
    pid = _agent_pid(tmux, "fleet-s2")
    assert asyncio.run(quit_assistant(tmux, "fleet-s2", profile, pid, BUDGET_S))
    assert not (tmp_path / "typed.txt").exists(), (tmp_path / "typed.txt").read_text()

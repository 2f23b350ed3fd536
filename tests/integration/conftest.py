"""Integration fixtures: a private tmux server per test, a real git repo per test, a NATS client
onto the test's nats-server with fleetd's streams.

Waiting is always "until this is true, or fail after a generous deadline": no test asserts
how long anything takes.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client

from infra import procs
from infra.nats import connect, ensure_streams
from infra.tmux import Tmux
from schemas.errors import SessionMissing
from tests import leftovers

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout} s (last value: {value!r})")
        time.sleep(interval)


@pytest.fixture
def tmux_socket() -> Iterator[str]:
    """A unique tmux socket name; the server on it, and every pane process, die at teardown."""
    name = leftovers.socket_name("test")
    yield name
    tmux = Tmux(name)
    pids: list[int] = []
    for session in tmux.list_sessions():
        with contextlib.suppress(SessionMissing):  # its last window may exit meanwhile
            pids += tmux.pane_pids(session)
    tree = procs.tree(pids)
    tmux.kill_server()
    procs.terminate_processes(tree, 0.2, 5.0)


@pytest.fixture
def tmux(tmux_socket: str) -> Tmux:
    """Shells without rc files: a user's .bashrc must not slow or change what tests see."""
    return Tmux(tmux_socket, shell="bash --norc --noprofile")


def git(cwd: Path, *args: str) -> str:
    """Plain git, for tests to set up and inspect repositories independently of Worktrees."""
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A real repository on branch main with one commit (README.md and a .gitignore)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Fleet Test")
    git(repo, "config", "user.email", "test@fleet.invalid")
    (repo / "README.md").write_text("hello\n")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", "README.md", ".gitignore")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A client onto the test's nats-server, whose streams it has made."""
    client = await connect(nats_url)
    await ensure_streams(client.jetstream())
    try:
        yield client
    finally:
        await client.close()

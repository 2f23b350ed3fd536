"""`fleet ls --watch`, `fleet top`, colour, the spawn spinner and `__complete-agents`, as a user
runs them: the CLI in a subprocess against a real fleet (nats-server, Ray, the supervisor, agent
actors in tmux, git worktrees) and, for `top`, the real health service sampling the agents.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from infra.nats import connect
from services.health import HealthConfig, HealthService
from tests.fleet.health_fixtures import running_health
from tests.integration.test_cli import (  # noqa: F401  (fixtures, by name)
    GUARD_S,
    REPO,
    arun,
    follow,
    live,
    repo,
    run,
    wait_for_line,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_env(env: dict[str, str]) -> dict[str, str]:
    """The fleet's environment without any colour setting of the person running the tests."""
    return {k: v for k, v in env.items() if k not in ("NO_COLOR", "FLEET_COLOR")}


def read_to_end(master: int) -> bytes:
    """What a terminal's child writes until it closes the terminal."""
    seen = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return bytes(seen)


def on_a_terminal(env: dict[str, str], *args: str, stream: str = "stdout") -> tuple[int, str]:
    """The CLI with a pty as its stdout or stderr (the other a pipe): its status, the pty's text."""
    master, slave = pty.openpty()
    where = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: slave}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO, env={**env, "TERM": "xterm"}, stdin=subprocess.DEVNULL, **where,
    )  # fmt: skip
    os.close(slave)
    seen = read_to_end(master)
    proc.communicate(timeout=GUARD_S)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def redrawn_in_place(env: dict[str, str]) -> str:
    """`fleet ls --watch` on a terminal until it shows an agent, then Ctrl-C; what it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "ls", "--watch"],
        cwd=REPO, env={**env, "TERM": "xterm"}, stdin=subprocess.DEVNULL,
        stdout=slave, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + GUARD_S
    try:
        while b"RUNNING" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        seen += read_to_end(master)
        _, err = proc.communicate(timeout=GUARD_S)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    return seen.decode(errors="replace")


def test_watch_shows_a_pause_live_on_a_pipe_and_redraws_in_place_on_a_terminal(
    live: Any,  # noqa: F811
    repo: Path,  # noqa: F811
    follow: Callable[..., subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    env = live.env
    assert run(env, "spawn", "--repo", str(repo), "--name", "w1").status == 0
    watching = follow(env, "ls", "--watch", "--interval", "0.1")
    wait_for_line(watching, r"^w1\s+RUNNING\s+READY\s+shell\s+fleet/w1")
    assert run(env, "pause", "w1").status == 0
    wait_for_line(watching, r"^w1\s+PAUSED\s+READY")
    assert run(env, "resume", "w1").status == 0
    wait_for_line(watching, r"^w1\s+RUNNING")
    assert run(env, "spawn", "--repo", str(repo), "--name", "w2").status == 0
    wait_for_line(watching, r"^w2\s+(SPAWNING|RUNNING)\s")  # a new agent joins the table
    watching.send_signal(signal.SIGINT)
    assert watching.wait(timeout=GUARD_S) == 0  # Ctrl-C ends a live view without an error
    assert watching.stderr is not None and b"Traceback" not in watching.stderr.read()

    on_screen = redrawn_in_place(plain_env(env))
    assert "\x1b[?1049h" in on_screen and "fleet ls --watch" in on_screen  # the alternate screen
    last = on_screen.rpartition("\x1b[?1049l")[2]  # back on the normal screen: the last frame
    assert "\x1b[?25h" in on_screen and re.search(r"w1\s+(\x1b\[\d+m)?RUNNING", last), last

    status, screen = on_a_terminal(plain_env(env), "ls")
    assert status == 0 and "\x1b[32mRUNNING" in screen  # a terminal gets colour
    plain = run(plain_env(env), "ls")
    assert "\x1b[" not in plain.out and re.search(r"^w1\s+RUNNING", plain.out, re.M)
    status, screen = on_a_terminal({**plain_env(env), "NO_COLOR": "1"}, "ls")
    assert status == 0 and "\x1b[" not in screen and "w1" in screen

    assert run(env, "__complete-agents").out.split() == ["w1", "w2"]


def test_spawn_shows_a_spinner_on_a_terminal_and_nothing_on_a_pipe(
    live: Any,  # noqa: F811
    repo: Path,  # noqa: F811
) -> None:
    status, spinner = on_a_terminal(live.env, "spawn", "--repo", str(repo), "--name", "p1",
                                    stream="stderr")  # fmt: skip
    assert status == 0
    assert re.search(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] spawning p1: \S+", spinner), spinner
    assert spinner.endswith("\r\x1b[2K"), spinner[-80:]  # the line is cleared at the end
    piped = run(live.env, "spawn", "--repo", str(repo), "--name", "p2")
    assert piped.status == 0 and piped.err == ""
    assert re.search(r"^p2\s+session\.started", piped.out, re.M)  # the step lines, for logs


@pytest.fixture
async def health(live: Any) -> AsyncIterator[HealthService]:  # noqa: F811
    """The health service, sampling every 0.3 s, in this test's event loop (as `fleet up` does)."""
    nc = await connect(live.nats_url)
    try:
        async with running_health(nc, HealthConfig(sample_period_s=0.3, tick_s=0.1)) as service:
            yield service
    finally:
        await nc.close()


async def top_rows(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = await arun(env, "top", "--once", "--json", *args)
    assert result.status == 0, result.err
    rows: list[dict[str, Any]] = json.loads(result.out)
    return rows


async def test_top_once_gives_cpu_and_memory_of_a_running_agent(
    live: Any,  # noqa: F811
    repo: Path,  # noqa: F811
    health: HealthService,
) -> None:
    env = live.env
    for name in ("t1", "t2"):
        spawned = await arun(env, "spawn", "--repo", str(repo), "--name", name)
        assert spawned.status == 0, spawned.err
    assert (await arun(env, "send", "t2", "yes > /dev/null &")).status == 0  # t2 is busy
    deadline = time.monotonic() + 60
    while True:
        rows = {r["id"]: r for r in await top_rows(env)}
        if all(r["cpu_percent"] is not None for r in rows.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert set(rows) == {"t1", "t2"}
    for row in rows.values():
        assert row["lifecycle"] == "RUNNING" and row["activity"]
        assert row["cpu_percent"] is not None, rows
        assert row["rss_mb"] > 0 and row["threads"] >= 1 and row["processes"] >= 1
        assert row["restarts"] == 0 and row["health"] in ("ok", "-")
    while rows["t2"]["cpu_percent"] < 20 and time.monotonic() < deadline:
        rows = {r["id"]: r for r in await top_rows(env)}
        await asyncio.sleep(0.3)
    assert next(r["id"] for r in await top_rows(env, "--sort", "cpu")) == "t2", rows
    assert [r["id"] for r in await top_rows(env, "--sort", "name")] == ["t1", "t2"]
    text = await arun(env, "top", "--once")
    assert text.status == 0 and text.out.split("\n")[0].split()[:4] == [
        "ID", "LIFECYCLE", "ACTIVITY", "CPU%"
    ]  # fmt: skip
    assert (await arun(env, "send", "t2", "kill %1")).status == 0

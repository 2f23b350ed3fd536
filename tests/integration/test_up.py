"""`fleet up` as a user runs it: a real subprocess, a real nats-server, real signals."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest

from infra import natsauth
from infra.natsserver import NatsServer
from schemas import subjects
from tests.fleetcli import GUARD_S, REPO, fleet_cli


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return fleet_cli(dict(os.environ), *args)


def up_json() -> subprocess.Popen[str]:
    """A foreground `fleet up --json` in this process's environment, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--json"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The ready line `fleet up --json` prints, or a failure that shows its stderr."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(GUARD_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"fleet up printed no ready line; stderr:\n{err}")
    return line


@pytest.fixture
def fleet_up(state_dir: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A foreground `fleet up --json` and the state it printed; interrupted if a test did not."""
    proc = up_json()
    try:
        yield proc, json.loads(_first_line(proc))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=GUARD_S)


def _stopped_cleanly(proc: subprocess.Popen[str], state: dict[str, Any], state_dir: Path) -> None:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == 0, err
    assert not (state_dir / "fleet.json").exists()
    if state["nats_pid"] is not None:
        assert not psutil.pid_exists(state["nats_pid"])  # reaped: neither zombie nor orphan


async def test_up_status_refuse_and_stop(
    fleet_up: tuple[subprocess.Popen[str], dict[str, Any]], state_dir: Path
) -> None:
    proc, printed = fleet_up
    status = fleet("status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["nats_url"] == printed["nats_url"]
    assert shown["nats_pid"] == printed["nats_pid"] and shown["nats_alive"] is True
    assert shown["state_dir"] == str(state_dir) and shown["pid"] == proc.pid
    assert printed["nats_url"] in fleet("status").stdout

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # users only
        await nats.connect(shown["nats_url"], allow_reconnect=False, max_reconnect_attempts=0)
    control = natsauth.read_credential(shown["nats_creds"])  # the control plane's, 0600
    assert control.password not in json.dumps(shown)
    assert not Path(shown["nats_creds"]).stat().st_mode & 0o077
    nc = await nats.connect(natsauth.with_credential(shown["nats_url"], control))
    try:
        info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert info.config.name == subjects.EVENTS_STREAM
    finally:
        await nc.close()

    again = fleet("up", "--json")
    assert again.returncode == 2
    assert f"already up on state dir {state_dir} (process {proc.pid})" in again.stderr

    _stopped_cleanly(proc, printed, state_dir)
    after = fleet("status")
    assert after.returncode == 2 and "`fleet up`" in after.stderr


def test_a_crashed_nats_server_is_restarted(
    fleet_up: tuple[subprocess.Popen[str], dict[str, Any]], state_dir: Path
) -> None:
    proc, printed = fleet_up
    os.kill(printed["nats_pid"], signal.SIGKILL)
    assert proc.stderr is not None
    for line in iter(proc.stderr.readline, ""):  # the restart is announced once done
        if "restarted as pid" in line:
            break
    shown = json.loads(fleet("status", "--json").stdout)
    assert shown["nats_pid"] != printed["nats_pid"] and shown["nats_alive"] is True
    assert shown["nats_url"] == printed["nats_url"]  # same port, so clients reconnect
    _stopped_cleanly(proc, shown, state_dir)


def test_up_uses_an_existing_nats(
    state_dir: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_NATS_URL", nats_server.url)
    proc = up_json()
    printed = json.loads(_first_line(proc))
    assert (printed["nats_url"], printed["nats_pid"]) == (nats_server.url, None)
    assert not (state_dir / "nats").exists()
    _stopped_cleanly(proc, printed, state_dir)
    assert nats_server.running  # not ours to stop


def _wait_exited(proc: psutil.Process) -> None:
    """Wait for a process that is not our child to exit: gone, or a zombie its new parent
    (init, which may reap lazily in a container) has not collected yet."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
    pytest.fail(f"process {proc.pid} did not exit")


def test_detach_returns_once_ready(state_dir: Path) -> None:
    started = fleet("up", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    printed = json.loads(started.stdout)
    daemon = psutil.Process(printed["pid"])
    assert fleet("status", "--json").returncode == 0
    daemon.send_signal(signal.SIGINT)
    _wait_exited(daemon)
    assert not (state_dir / "fleet.json").exists()
    assert not psutil.pid_exists(printed["nats_pid"])


def test_a_taken_gateway_port_exits_2_with_its_sentence_and_leaves_nothing_running(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway starts last but one: its port taken, the parts started before it (NATS,
    Ray, the supervisor, the gateway's own NATS tasks) stop, and `fleet up` says why. It
    used to hang for good in asyncio's shutdown, a mail poller swallowing its cancel."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("FLEET_GATEWAY_PORT", str(port))
        result = fleet("up")  # fleet_cli's guard: a hang fails this test
    assert result.returncode == 2, result
    said = result.stderr.strip().splitlines()[-1]
    assert said == (
        f"fleet: FLEET_GATEWAY_PORT='{port}' cannot be used: the gateway cannot listen on "
        f"127.0.0.1:{port}: it is taken; set FLEET_GATEWAY_PORT to a free port (0: any)"
    ), result.stderr
    assert not (state_dir / "fleet.json").exists()
    left = [p.pid for p in psutil.process_iter() if _of_state_dir(p, state_dir)]
    assert left == [], f"processes of {state_dir} still running: {left}"


def _of_state_dir(proc: psutil.Process, state_dir: Path) -> bool:
    try:
        return any(str(state_dir) in a for a in proc.cmdline())
    except psutil.Error:
        return False


def test_a_bad_setting_exits_2_with_its_sentence(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_GATEWAY_PORT", "seventy")
    result = fleet("up")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fleet: FLEET_GATEWAY_PORT='seventy' cannot be used")

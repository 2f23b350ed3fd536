"""kill -9 of the `fleet up` process alone: its nats-server dies with it, its local Ray daemon
lives on (like the agents' tmux server), and the next `fleet up` joins that Ray and finds the
same agent actors there, re-adopted without a restart. A clean stop then ends our Ray."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from infra import natsorphan, raycluster
from infra.natsserver import NatsServer, find_binary
from tests.fleetcli import GUARD_S, fleet_cli, fleet_state


def _ended(pid: int) -> bool:
    """Gone, or a zombie its new parent (init, which may reap lazily) has not collected."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_ended(pid: int) -> None:
    deadline = time.monotonic() + GUARD_S
    while not _ended(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} did not exit")
        time.sleep(0.02)


def _servers_on(store: Path) -> list[int]:
    """Pids of the live nats-servers whose command line names `store` (or its config)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if "nats-server" not in (proc.info["name"] or ""):
            continue
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(store) in " ".join(
            proc.info["cmdline"] or []
        ):
            found.append(proc.pid)
    return found


def _agent(env: dict[str, str], name: str) -> dict[str, object]:
    shown = fleet_cli(env, "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    agent: dict[str, object] = json.loads(shown.stdout)
    return agent


def test_a_crashed_fleet_up_leaves_ray_running_and_the_next_one_readopts_at_once(
    up_env: dict[str, str], repo: Path
) -> None:
    env, names = up_env, ["a1", "a2"]
    store = Path(env["FLEET_STATE_DIR"]) / "nats"
    assert fleet_cli(env, "up", "--detach").returncode == 0
    for name in names:
        spawned = fleet_cli(env, "spawn", "--repo", str(repo), "--name", name, "--json")
        assert spawned.returncode == 0, spawned.stderr
    before = {name: _agent(env, name)["actor"] for name in names}
    first = fleet_state(env)
    daemon = raycluster.read_daemon(Path(env["FLEET_STATE_DIR"]))
    assert daemon is not None and raycluster.alive(daemon)

    os.kill(first["pid"], signal.SIGKILL)  # the process only, not its group
    _wait_ended(first["pid"])
    _wait_ended(first["nats_pid"])  # it dies with its parent: no orphan on the store
    assert _servers_on(store) == []
    assert raycluster.alive(daemon), "the Ray daemon must outlive fleet up, as tmux does"

    again = fleet_cli(env, "up", "--detach")
    assert again.returncode == 0, again.stderr
    second = fleet_state(env)
    assert second["nats_url"] == first["nats_url"]  # the same port: old clients reconnect
    assert second["ray_address"] == first["ray_address"]
    assert _servers_on(store) == [second["nats_pid"]]
    for name in names:
        agent = _agent(env, name)  # the actor itself answers, RUNNING, in the same process
        assert agent["lifecycle"] == "RUNNING"
        assert agent["actor"] == before[name], "re-adopted, not re-created"
    ours = raycluster.processes(daemon)
    assert ours, "the Ray daemon of the first fleet up is the one in use"

    os.kill(second["pid"], signal.SIGINT)  # a clean stop ends everything it runs, Ray too
    _wait_ended(second["pid"])
    assert all(_ended(p.pid) for p in ours)
    assert raycluster.processes(daemon) == []
    assert raycluster.read_daemon(Path(env["FLEET_STATE_DIR"])) is None
    assert _servers_on(store) == []


def test_a_start_stops_a_server_left_on_its_store_and_takes_its_port(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    orphan = subprocess.Popen(  # as a crashed parent would leave it: nobody stops it
        [str(find_binary()), "--port", "-1", "--jetstream", "--store_dir", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _port_of(orphan.pid)
        natsorphan.record(store, orphan.pid, port)
        with NatsServer.start(store, reuse_port=True) as server:
            assert orphan.poll() is not None, "two servers on one store"
            assert server.port == port
            assert _servers_on(store) == [server.pid]
    finally:
        orphan.kill()
        orphan.wait()


def test_a_start_leaves_alone_a_recorded_pid_that_is_not_a_server_and_a_taken_port(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        natsorphan.record(store, os.getpid(), busy)  # a reused pid: this test, not a server
        with NatsServer.start(store, reuse_port=True) as server:
            assert server.running and server.port != busy
    assert natsorphan.previous_port(store, "127.0.0.1") == server.port  # recorded, free again


def _port_of(pid: int) -> int:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        listening = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp")]
        if listening:
            return min(listening)
        time.sleep(0.01)
    pytest.fail(f"nats-server {pid} never listened")


def test_when_the_old_nats_port_is_taken_the_next_fleet_up_starts_a_new_ray(
    up_env: dict[str, str], repo: Path
) -> None:
    """Actors left running would retry the old URL forever: they go with their Ray, and the
    new one re-creates them (the slow path, as after a crash of the whole machine)."""
    env, state_dir = up_env, Path(up_env["FLEET_STATE_DIR"])
    assert fleet_cli(env, "up", "--detach").returncode == 0
    spawned = fleet_cli(env, "spawn", "--repo", str(repo), "--name", "a1", "--json")
    assert spawned.returncode == 0, spawned.stderr
    before, first = _agent(env, "a1")["actor"], fleet_state(env)
    old = raycluster.read_daemon(state_dir)
    assert old is not None
    os.kill(first["pid"], signal.SIGKILL)
    _wait_ended(first["pid"])
    _wait_ended(first["nats_pid"])
    port = int(first["nats_url"].rpartition(":")[2])
    with socket.create_server(("127.0.0.1", port)):  # someone else took it meanwhile
        again = fleet_cli(env, "up", "--detach")
        assert again.returncode == 0, again.stderr
        assert fleet_state(env)["nats_url"] != first["nats_url"]
        assert raycluster.processes(old) == [], "the old Ray, unreachable from NATS, is ended"
        assert raycluster.read_daemon(state_dir) != old
        agent = _agent(env, "a1")
        assert agent["lifecycle"] == "RUNNING" and agent["actor"] != before

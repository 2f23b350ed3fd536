"""Fixtures shared by every test folder: a real nats-server per test, a private state dir, a
git repository, a whole fleet on Ray, and the environment of a private `fleet up`; and for the
whole run a TMUX_TMPDIR of its own, removed at its end, and a check that the run left nothing
behind (tests/leftovers.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from infra.natsserver import NatsServer
from tests import leftovers
from tests.fleetcli import private_up

# Property tests judge what is generated, never how fast: on a loaded 2-core machine an example
# can take longer than hypothesis' 200 ms deadline, and generating them can look "too slow".
settings.register_profile(
    "fleet", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("fleet")

_TMUX_TMPDIR = pytest.StashKey[Path]()
_STARTED = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    """Before any tmux server, Ray or `fleet up` starts: the run's own TMUX_TMPDIR."""
    config.stash[_STARTED] = time.time()
    config.stash[_TMUX_TMPDIR] = leftovers.private_tmux_tmpdir()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's tmux sockets go with their folder; a server still running is ended first, so
    none is left running without a socket to reach it by."""
    tmpdir = config.stash.get(_TMUX_TMPDIR, None)
    if tmpdir is not None:
        leftovers.end_live_servers(tmpdir)
        leftovers.remove(tmpdir)


@pytest.fixture(scope="session", autouse=True)
def leaves_nothing_behind(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """After the last test (and the session's Ray): no tmux server still running, no socket
    of this run in the shared /tmp/tmux-<uid>/, no Chromium profile or temp folder."""
    yield
    config = request.config
    found = leftovers.leftovers(
        config.stash[_TMUX_TMPDIR], config.stash[_STARTED], tmp_path_factory.getbasetemp()
    )
    assert not found, "this run left things behind: " + "; ".join(found)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a fresh store; tests may `.kill()` and `.restart()`."""
    server = NatsServer.start(tmp_path / "nats", port=None)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private FLEET_STATE_DIR, so no test touches the user's real state."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("FLEET_STATE_DIR", str(path))
    for name in ("FLEET_NATS_URL", "FLEET_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    # Any free port: the default (7070) may be another run's, or the user's own fleet's.
    monkeypatch.setenv("FLEET_GATEWAY_PORT", "0")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit: a README and a .gitignore that ignores *.log."""
    path = tmp_path / "repo"
    path.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "t@example.com"],
        ["config", "user.name", "Test"],
    ):
        subprocess.run(["git", *args], cwd=path, check=True)
    (path / "README.md").write_text("hello\n")
    (path / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=path, check=True)
    return path


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a private `fleet up` (tests/fleetcli.py), cleaned up afterwards."""
    with private_up(tmp_path) as env:
        yield env


# -- a whole fleet: real nats-server, real Ray, the supervisor, a private tmux socket ---------


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray for the whole run (it takes seconds to start); tests use namespaces."""
    from infra import raycluster

    address = raycluster.start(None, num_cpus=2)
    try:
        yield address
    finally:
        raycluster.stop()


@dataclass
class Fleet:
    """A running fleet for one test: where it listens, and how the CLI finds it."""

    nats_url: str
    state_dir: Path
    worktree_root: Path
    tmux_socket: str
    namespace: str
    supervisor: Any
    env: dict[str, str]

    def config(self) -> Any:
        from actors.agent import AgentConfig
        from actors.supervisor import FleetConfig
        from infra import fleetkey

        agent = AgentConfig(
            nats_url=self.nats_url,
            state_dir=str(self.state_dir),
            worktree_root=str(self.worktree_root),
            tmux_socket=self.tmux_socket,
            namespace=self.namespace,
            polite_timeout_s=2.0,
            term_timeout_s=2.0,
            monitor_period_s=0.2,
            mac_key=fleetkey.load_or_create(self.state_dir),
        )
        return FleetConfig(agent=agent, pool_size=1, max_agents=20)


def _fleet_down(fleet: Fleet) -> None:
    import ray
    from ray.util import list_named_actors

    for found in list_named_actors(all_namespaces=True):
        if found.get("namespace") == fleet.namespace:
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(found["name"], namespace=fleet.namespace), no_restart=True)
    subprocess.run(
        ["tmux", "-L", fleet.tmux_socket, "kill-server"], capture_output=True, check=False
    )


def new_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_url: str) -> Fleet:
    """A fleet under tmp_path with its own tmux socket and Ray namespace, its variables set for
    the CLI; its supervisor is not started yet (`start_supervisor`)."""
    tag = uuid.uuid4().hex[:8]
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    env = {
        "FLEET_STATE_DIR": str(state_dir),
        "FLEET_TMUX_SOCKET": leftovers.socket_name("test"),
        "FLEET_WORKTREE_ROOT": str(tmp_path / "worktrees"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Fleet(
        nats_url=nats_url,
        state_dir=state_dir,
        worktree_root=tmp_path / "worktrees",
        tmux_socket=env["FLEET_TMUX_SOCKET"],
        namespace=f"test-{tag}",
        supervisor=None,
        env={**os.environ, **env},
    )


def start_supervisor(
    fleet: Fleet, config: Any, ray_address: str, server: NatsServer, **state: Any
) -> None:
    """Start the fleet's supervisor and write the state file the CLI finds the fleet by;
    `state` adds fields to it (the control plane's NATS credentials)."""
    import ray

    from actors import supervisor
    from infra.config import FleetState, Settings, now_utc, write_state

    fleet.supervisor = supervisor.start(config)
    ray.get(fleet.supervisor.known.remote(), timeout=60)
    written = FleetState(
        pid=os.getpid(),
        state_dir=str(fleet.state_dir),
        nats_url=server.url,
        nats_pid=server.pid,
        started_at=now_utc(),
        ray_address=ray_address,
        **state,
    )
    write_state(Settings.from_env().state_file, written)


@pytest.fixture
def fleet(
    ray_cluster: str, nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Fleet]:
    """nats-server + Ray + supervisor + private tmux socket, and a state file for the CLI."""
    fleet = new_fleet(tmp_path, monkeypatch, nats_server.url)
    try:
        start_supervisor(fleet, fleet.config(), ray_cluster, nats_server)
        yield fleet
    finally:
        _fleet_down(fleet)

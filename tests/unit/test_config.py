"""Settings from the environment, and the state file `fleet up` leaves for other commands."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.config import (
    DEFAULT_GATEWAY_PORT,
    FleetState,
    Settings,
    read_state,
    read_state_file,
    remove_state,
    write_state,
)
from schemas.errors import InvalidSetting, NotRunning


def test_defaults_follow_xdg_state_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"XDG_STATE_HOME": str(tmp_path)})
    assert settings.state_dir == tmp_path / "fleetd"
    assert settings.nats_url is None
    assert settings.ray_address is None
    assert settings.gateway_port == DEFAULT_GATEWAY_PORT
    assert settings.worktrees == tmp_path / "fleetd" / "worktrees"
    assert settings.state_file == tmp_path / "fleetd" / "fleet.json"
    assert settings.nats_store_dir == tmp_path / "fleetd" / "nats"


def test_without_xdg_the_state_goes_under_home() -> None:
    assert Settings.from_env({}).state_dir == Path.home() / ".local" / "state" / "fleetd"


def test_every_variable_is_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "FLEET_STATE_DIR": str(tmp_path / "s"),
            "FLEET_NATS_URL": "nats://n1:4222,nats://n2:4222",
            "FLEET_RAY_ADDRESS": "ray://head:10001",
            "FLEET_GATEWAY_PORT": " 8080 ",
            "FLEET_WORKTREE_ROOT": str(tmp_path / "w"),
        }
    )
    assert settings == Settings(
        state_dir=tmp_path / "s",
        nats_url="nats://n1:4222,nats://n2:4222",
        ray_address="ray://head:10001",
        gateway_port=8080,
        worktree_root=tmp_path / "w",
    )
    assert settings.worktrees == tmp_path / "w"


def test_empty_variables_count_as_unset() -> None:
    settings = Settings.from_env({"FLEET_NATS_URL": "", "FLEET_GATEWAY_PORT": "  "})
    assert (settings.nats_url, settings.gateway_port) == (None, DEFAULT_GATEWAY_PORT)


@pytest.mark.parametrize(
    ("raw", "why"), [("http", "must be a port number"), ("70000", "between 1 and 65535")]
)
def test_a_bad_gateway_port_is_one_sentence(raw: str, why: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        Settings.from_env({"FLEET_GATEWAY_PORT": raw})
    assert str(info.value).startswith(f"FLEET_GATEWAY_PORT='{raw}' cannot be used")
    assert why in str(info.value)
    assert info.value.code == "invalid_setting"


def _state(pid: int, state_dir: Path) -> FleetState:
    return FleetState(
        pid=pid,
        state_dir=str(state_dir),
        nats_url="nats://127.0.0.1:4222",
        nats_pid=None,
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_state_file_round_trips(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    state = _state(os.getpid(), tmp_path)
    write_state(settings.state_file, state)
    assert read_state(settings) == state
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.json"]  # no temp file left
    remove_state(settings.state_file)
    remove_state(settings.state_file)
    assert read_state_file(settings.state_file) is None


def test_no_state_file_says_to_run_fleet_up(tmp_path: Path) -> None:
    with pytest.raises(NotRunning, match="start it with `fleet up`"):
        read_state(Settings(state_dir=tmp_path))


def test_a_dead_pid_means_not_running(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    settings = Settings(state_dir=tmp_path)
    write_state(settings.state_file, _state(gone.pid, tmp_path))
    with pytest.raises(NotRunning, match=f"process {gone.pid}.*has exited.*`fleet up`"):
        read_state(settings)


def test_a_garbled_state_file_is_named(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    settings.state_file.write_text("{not json")
    with pytest.raises(NotRunning, match=r"fleet\.json cannot be read"):
        read_state(settings)

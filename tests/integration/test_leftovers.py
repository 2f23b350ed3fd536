"""The end-of-run check (tests/leftovers.py) finds what a run leaves: it can fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import leftovers


@pytest.fixture
def tmpdir_of_a_run() -> Iterator[Path]:
    """A TMUX_TMPDIR like the run's own, apart from it (short: socket paths are capped)."""
    path = Path(tempfile.mkdtemp(prefix="fleet-tmux-t-"))
    try:
        yield path
    finally:
        leftovers.end_live_servers(path)
        leftovers.remove(path)


def tmux(tmpdir: Path, name: str, *args: str) -> None:
    env = {**os.environ, "TMUX_TMPDIR": str(tmpdir)}
    subprocess.run(["tmux", "-L", name, *args], env=env, check=True, capture_output=True)


def dead_socket(path: Path) -> None:
    """What a tmux server killed with -9 leaves: a socket file nothing listens on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def test_the_run_has_its_own_tmux_folder() -> None:
    assert Path(os.environ["TMUX_TMPDIR"]).is_dir()
    assert Path(os.environ["TMUX_TMPDIR"]) != leftovers.DEFAULT_TMUX_TMPDIR


def test_a_tmux_server_left_running_is_named_and_ended(
    tmpdir_of_a_run: Path, tmp_path: Path
) -> None:
    name = leftovers.socket_name("unit")
    tmux(tmpdir_of_a_run, name, "new-session", "-d", "-s", "left", "sleep 600")
    tmux(tmpdir_of_a_run, "stopped", "new-session", "-d", "-s", "gone", "sleep 600")
    tmux(tmpdir_of_a_run, "stopped", "kill-server")  # its socket stays, dead

    found = leftovers.leftovers(tmpdir_of_a_run, 0.0, tmp_path, tmp_path)

    assert found == [f"tmux servers were still running at the end on {name}"]
    assert leftovers.end_live_servers(tmpdir_of_a_run) == []  # it was ended


def test_a_socket_of_the_run_outside_its_folder_is_a_stray(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    since = time.time() - 1
    tagged = leftovers.socket_name("up")
    for name in (tagged, "fleet-test-someone-elses", "fleetd"):
        dead_socket(leftovers.tmux_dir(shared) / name)

    assert leftovers.strays(since, shared) == [tagged]
    assert leftovers.strays(time.time() + 60, shared) == []  # made before the run: not its own
    found = leftovers.leftovers(tmp_path / "no-tmux", since, tmp_path / "none", shared)
    assert found == [
        f"tmux sockets {tagged} were made in {leftovers.tmux_dir(shared)} "
        "by a process without the run's TMUX_TMPDIR"
    ]


def test_a_chromium_profile_or_temp_folder_is_named(tmp_path: Path) -> None:
    fakes = tmp_path / "fakes"  # removed at the end, or the run's own check finds them
    profile = fakes / "t0" / "chromium" / "profile"
    profile.mkdir(parents=True)
    (profile / "DevToolsActivePort").write_text("9222\n/devtools/browser/x\n")
    singleton = fakes / "t1" / "org.chromium.Chromium.AbC123"
    singleton.mkdir(parents=True)
    temp = leftovers.chromium_tmpdir()
    try:
        assert leftovers.chromium_left(fakes) == [temp, profile, singleton]
        found = leftovers.leftovers(tmp_path / "no-tmux", 0.0, fakes, tmp_path / "shared")
        assert found == [f"Chromium left {temp}, {profile}, {singleton}"]
    finally:
        shutil.rmtree(fakes)
        shutil.rmtree(temp)

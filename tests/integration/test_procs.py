"""Process trees with real processes: pause, resume, terminate, memory."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from infra import procs
from tests.integration.conftest import wait_until

Spawn = Callable[[str], "subprocess.Popen[bytes]"]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `sh -c SCRIPT` in its own session; whatever is left is killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(script: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        procs.terminate_tree([proc.pid], 0.1, 5)
        proc.poll()


def test_one_pass_forest_gives_the_same_trees(spawn: Spawn) -> None:
    a = spawn("sleep 1000 & (sleep 1000 & wait) & wait")
    b = spawn("sleep 1000; wait")
    wait_until(lambda: len(procs.tree([a.pid, b.pid])) == 6, "two shells and their children")
    forest = procs.Forest()
    for roots in ([a.pid], [b.pid], [a.pid, b.pid], [b.pid, a.pid, a.pid]):
        assert sorted(p.pid for p in forest.tree(roots)) == sorted(p.pid for p in procs.tree(roots))
    assert forest.tree([a.pid])[0].pid == a.pid  # parents before children
    assert os.getpid() not in [p.pid for p in forest.tree([os.getppid(), os.getpid()])]
    assert forest.tree([2**22 + 12345]) == []


def test_tree_has_descendants_and_never_ourselves(spawn: Spawn) -> None:
    root = spawn("sleep 1000 & sleep 1000; wait")
    wait_until(lambda: len(procs.tree([root.pid])) == 3, "a shell and two sleeps")
    assert procs.tree([root.pid])[0].pid == root.pid
    assert os.getpid() not in [p.pid for p in procs.tree([os.getpid(), root.pid])]
    assert procs.tree([2**22 + 12345]) == []  # no such pid: nothing, no error


def test_terminate_kills_what_ignores_sigterm(spawn: Spawn) -> None:
    root = spawn("trap '' TERM; sleep 1000 & sleep 1000 & wait")
    wait_until(lambda: len(procs.tree([root.pid])) == 3, "a shell and two sleeps")
    tree = procs.tree([root.pid])
    report = procs.terminate_tree([root.pid], polite_timeout=0.2, term_timeout=5)
    assert sorted(report.killed) == sorted(p.pid for p in tree) and report.terminated == []
    assert not any(_alive(p) for p in tree)


def test_terminate_is_polite_first(spawn: Spawn) -> None:
    root = spawn("sleep 1000 & sleep 1000; wait")
    wait_until(lambda: len(procs.tree([root.pid])) == 3, "a shell and two sleeps")
    tree = procs.tree([root.pid])
    report = procs.terminate_tree([root.pid], polite_timeout=10, term_timeout=5)
    assert report.killed == [] and sorted(report.terminated) == sorted(p.pid for p in tree)
    assert not any(_alive(p) for p in tree)


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigstop_groups_pause_and_sigcont_resumes(spawn: Spawn, tmp_path: Path) -> None:
    out = tmp_path / "ticks"
    root = spawn(f"while :; do echo tick >> {out}; sleep 0.02; done")
    wait_until(lambda: _count(out) > 3, "the loop to count")
    assert procs.signal_groups([root.pid], signal.SIGSTOP) == [root.pid]
    wait_until(
        lambda: all(p.status() in ("stopped", "zombie") for p in procs.tree([root.pid])),
        "the loop to stop",
    )
    paused = _count(out)
    assert _count(out) == paused
    procs.signal_groups([root.pid], signal.SIGCONT)
    wait_until(lambda: _count(out) > paused + 3, "the loop to count on")


def test_spared_pids_are_not_signalled(spawn: Spawn) -> None:
    root = spawn("sleep 1000; exit 0")
    wait_until(lambda: len(procs.tree([root.pid])) == 2, "a shell and a sleep")
    child = procs.tree([root.pid])[1]
    procs.signal_groups([root.pid], signal.SIGSTOP, spare=[root.pid])
    wait_until(lambda: child.status() == psutil.STATUS_STOPPED, "the child to stop")
    assert psutil.Process(root.pid).status() != psutil.STATUS_STOPPED
    procs.signal_groups([root.pid], signal.SIGCONT, spare=[root.pid])
    wait_until(lambda: child.status() != psutil.STATUS_STOPPED, "the child to continue")


def test_uss_mb_counts_the_tree(spawn: Spawn) -> None:
    root = spawn("sleep 1000 & sleep 1000; wait")
    wait_until(lambda: len(procs.tree([root.pid])) == 3, "a shell and two sleeps")
    assert procs.uss_mb([root.pid]) > procs.uss_mb([procs.tree([root.pid])[1].pid]) > 0
    assert procs.uss_mb([]) == 0

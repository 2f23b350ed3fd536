"""Ending process trees: exits are seen as they happen (a pidfd each), or by polling without
pidfds; a tree is read from its processes' children files, or from one pass over /proc."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from infra import procs
from tests.integration.conftest import wait_until
from tests.integration.test_procs import Spawn as Start
from tests.integration.test_procs import spawn as spawn_fixture

# The fixture of test_procs.py: `sh -c SCRIPT` in its own session, ended at teardown.
start = spawn_fixture


@pytest.mark.parametrize("pidfds", [True, False])
def test_wait_gone_returns_once_all_exited_and_names_the_rest(
    start: Start, pidfds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pidfds:

        def refused(pid: int) -> int:
            raise OSError(38, "pidfd_open refused")

        monkeypatch.setattr(os, "pidfd_open", refused)
    quick = start("trap 'exit 0' TERM; sleep 1000 & wait")
    stubborn = start("trap '' TERM; sleep 1000 & wait")
    wait_until(lambda: len(procs.tree([quick.pid, stubborn.pid])) == 4, "two shells, two sleeps")
    shells = [psutil.Process(quick.pid), psutil.Process(stubborn.pid)]
    for shell in shells:
        shell.send_signal(signal.SIGTERM)
    assert procs._wait_gone(shells[:1], 60) == []  # back as soon as it exits
    assert procs._wait_gone(shells, 0.2) == [shells[1]]  # its TERM is ignored
    quick.wait()


def test_terminate_tree_ends_every_root_of_one_pass(start: Start) -> None:
    roots = [start("sleep 1000 & sleep 1000 & wait") for _ in range(3)]
    pids = [r.pid for r in roots]
    wait_until(lambda: len(procs.tree(pids)) == 9, "three shells with two sleeps each")
    tree = procs.tree(pids)
    assert [p.pid for p in tree[:1]] == pids[:1]  # parents before children
    report = procs.terminate_tree(pids, polite_timeout=30, term_timeout=5)
    assert sorted(report.terminated) == sorted(p.pid for p in tree) and report.killed == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)


def test_tree_from_children_files_is_the_tree_of_one_pass(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert procs._CHILDREN_FILES  # Linux with CONFIG_PROC_CHILDREN, as every CI kernel
    roots = [start("sleep 1000 & (sleep 1000 & wait) & wait").pid, start("sleep 1000").pid]
    wait_until(lambda: len(procs.tree(roots)) == 6, "two shells and what they started")
    walked = [p.pid for p in procs.tree(roots)]
    monkeypatch.setattr(procs, "_CHILDREN_FILES", False)
    assert sorted(p.pid for p in procs.tree(roots)) == sorted(walked)
    assert walked[0] == roots[0] and procs.tree([2**22 + 12345]) == []

"""Adopting what a command's children leave behind, and ending it (`fleet login`).

An assistant run as the user (a login pane, outside any sandbox) may start a daemon that
outlives it: Codex's TUI forks a background app server, whose parent exits, so it is
reparented to init and runs on after the pane, the tmux server and `fleet login` are gone. A
child subreaper is given such orphans instead of init, and can end them when its job is done.
"""

from __future__ import annotations

import ctypes

import psutil

from infra import procs

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>, Linux 3.4+


def adopt_orphans() -> bool:
    """Make this process a child subreaper: a descendant whose parent exits is reparented to
    it, not to init. False where the kernel refuses (then orphans go to init as before)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def end_descendants(polite_timeout: float = 2.0, term_timeout: float = 2.0) -> list[int]:
    """End every process still below this one (SIGTERM, then SIGKILL); the pids ended.
    `ProcessesSurvived` (a sentence) if one outlives SIGKILL."""
    children = [c.pid for c in psutil.Process().children()]
    report = procs.terminate_tree(children, polite_timeout, term_timeout)
    return sorted(report.terminated + report.killed)

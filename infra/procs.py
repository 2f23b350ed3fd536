"""Process trees: pause, resume and end everything an agent started, leaving no orphans.

A pane's shell starts jobs in their own process groups, and those fork further; signalling
only the pane pid would leave them running. So every operation works on the whole tree
(each pid plus all its descendants, found with psutil), and pause/resume signal every
process group in it.

A tree is read from its own processes' children files (/proc/<pid>/task/<tid>/children), so
it costs reads of its few processes, not a pass over every process of the machine (psutil's
`children()` reads all of /proc once per call: 40-90 ms with 70 agents on a loaded machine, and
a stop asked for four trees). `Forest` makes one such pass for the trees of many roots. Ending
a tree waits on a pidfd per process, so a shell that exits at once is seen gone at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import psutil

from schemas.errors import ProcessesSurvived

_GONE = (psutil.NoSuchProcess, ProcessLookupError)
STOP_WAIT = 10.0  # a guard: a stop takes effect once the process is next scheduled, late on a
# loaded machine (1 s was too short there), so each group is waited for before the next


@dataclass(frozen=True)
class TerminateReport:
    """What `terminate_tree` did: which pids left on SIGTERM and which needed SIGKILL."""

    terminated: list[int]
    killed: list[int]


def tree(pids: Iterable[int]) -> list[psutil.Process]:
    """Each live pid and all its descendants, parents before children, without duplicates.

    Our own process is never part of a tree, so a stray pid can not make us signal ourselves.
    """
    roots = list(pids)
    if not roots:
        return []
    if not _CHILDREN_FILES:  # a kernel without CONFIG_PROC_CHILDREN: one pass over /proc
        return Forest().tree(roots)
    return _trees(roots, _own_children)


# Linux 3.5+ with CONFIG_PROC_CHILDREN (every major distribution: CRIU needs it).
_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _own_children(pid: int) -> list[int]:
    """`pid`'s children, from the children file of each of its threads (a child belongs to the
    thread that forked it). The kernel warns that a child exiting during the read can hide a
    sibling; `_freeze` reads again until a round finds nothing new, with the parents stopped."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone
        return []
    found: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += [int(child) for child in f.read().split()]
        except OSError:  # that thread ended meanwhile
            continue
    return found


def _trees(
    roots: Iterable[int], children_of: Callable[[int], Sequence[int]]
) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            family = _descendants(psutil.Process(pid), children_of)
        except _GONE:
            continue
        for proc in family:
            if proc.pid != os.getpid():
                seen.setdefault(proc.pid, proc)
    return list(seen.values())


@dataclass(frozen=True, slots=True)
class Stat:
    """What one read of /proc/<pid>/stat says of a process (see proc(5))."""

    ppid: int
    start: int  # clock ticks after boot: with the pid, names one process
    cpu_ticks: int  # user + system time, in clock ticks
    threads: int
    rss_pages: int
    zombie: bool


def _parse_stat(data: bytes) -> Stat:
    f = data[data.rfind(b")") + 2 :].split()
    return Stat(
        ppid=int(f[1]),
        start=int(f[19]),
        cpu_ticks=int(f[11]) + int(f[12]),
        threads=int(f[17]),
        rss_pages=int(f[21]),
        zombie=f[0] == b"Z",
    )


def _stats() -> dict[int, Stat]:
    """Every process's stat, from one pass over /proc."""
    found: dict[int, Stat] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                found[int(name)] = _parse_stat(f.read())
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return found


def _descendants(
    root: psutil.Process, children_of: Callable[[int], Sequence[int]]
) -> list[psutil.Process]:
    """`root` and its descendants, parents first, as psutil's `children(recursive=True)` finds
    them: a child older than `root` is a reused pid, not a child."""
    family, stack, visited = [root], [root.pid], {root.pid}
    while stack:
        for pid in children_of(stack.pop()):
            if pid in visited:  # pids reused while /proc was read can make a cycle
                continue
            visited.add(pid)
            try:
                child = psutil.Process(pid)
                if child.create_time() >= root.create_time():
                    family.append(child)
                    stack.append(pid)
            except _GONE:
                continue
    return family


class Forest:
    """Every process's stat and children, from one pass over /proc, for the trees of many
    roots.

    `psutil.Process.children()` reads all of /proc per call: a sampler that asked for the
    trees of 200 agents' panes one by one made 800 such passes per round (hundreds of
    thousands of /proc reads every 2 s), where one pass serves them all. The stats it read
    on the way serve the sampler's figures too (`family`), so a round reads each process's
    stat once, where psutil read four files of each."""

    def __init__(self) -> None:
        self.stats = _stats()
        self.children: dict[int, list[int]] = {}
        for pid, stat in self.stats.items():
            self.children.setdefault(stat.ppid, []).append(pid)

    def tree(self, pids: Iterable[int]) -> list[psutil.Process]:
        """As `tree`, from this pass."""
        return _trees(pids, lambda pid: self.children.get(pid, ()))

    def family(self, pids: Iterable[int]) -> list[int]:
        """As `tree`, as pids of this pass, without a psutil object or another read: each
        root and its descendants started no earlier than it (an older one is a reused pid)."""
        seen: dict[int, None] = {}
        me = os.getpid()
        for root in pids:
            top = self.stats.get(root)
            if top is None or root in seen:
                continue
            stack = [root]
            seen[root] = None
            while stack:
                for child in self.children.get(stack.pop(), ()):
                    stat = self.stats[child]
                    if child not in seen and stat.start >= top.start:
                        seen[child] = None
                        stack.append(child)
        seen.pop(me, None)
        return list(seen)


def signal_groups(pids: Iterable[int], sig: int, spare: Iterable[int] = ()) -> list[int]:
    """Send `sig` to every process group in the pids' trees; return the groups signalled.

    Groups are stopped parents first, each one stopped before the next, and continued
    children first: a job-control shell that is still running when its job stops would
    print "Stopped" and abandon the job. `spare` pids are never signalled and their groups
    are signalled process by process: tmux answers a stop of its own child (a pane process)
    with SIGCONT to that child's group, so pane processes must be spared (see
    `Tmux.signal_panes`). Our own group is likewise never signalled as a group.
    """
    pids, spared = list(pids), set(spare)
    order = _signal_tree(pids, sig, spared)
    if sig == signal.SIGSTOP:
        # A process forked while the tree was being stopped (a pane's sandbox starting its
        # shell) was not in it: stop the tree again until nothing in it is left running.
        for _ in range(STOP_ROUNDS):
            running = [p for p in tree(pids) if p.pid not in spared and _running(p)]
            if not running:
                break
            # (A process not yet scheduled since its SIGSTOP still reads running, under load:
            # signalled again, its group is named once.)
            order += [g for g in _signal_tree(pids, sig, spared) if g not in order]
    return order


STOP_ROUNDS = 5


def _running(proc: psutil.Process) -> bool:
    try:
        return _alive(proc) and proc.status() != psutil.STATUS_STOPPED
    except _GONE:
        return False


def _signal_tree(pids: Iterable[int], sig: int, spared: set[int]) -> list[int]:
    groups = _groups_by_depth(tree(pids))
    order = list(reversed(groups)) if sig == signal.SIGCONT else list(groups)
    for pgid in order:
        members = groups[pgid]
        if pgid == os.getpgrp() or any(p.pid in spared for p in members):
            _send([p for p in members if p.pid not in spared], sig)
        else:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                continue  # the whole group exited meanwhile: nothing left to signal
        if sig == signal.SIGSTOP:
            _wait_stopped([p for p in members if p.pid not in spared], STOP_WAIT)
    return order


def _groups_by_depth(processes: list[psutil.Process]) -> dict[int, list[psutil.Process]]:
    """Process groups ordered by the depth of their shallowest member in the tree."""
    depth: dict[int, int] = {}
    groups: dict[int, list[psutil.Process]] = {}
    for proc in processes:  # tree() lists every parent before its children
        try:
            depth[proc.pid] = depth.get(proc.ppid(), -1) + 1
            groups.setdefault(os.getpgid(proc.pid), []).append(proc)
        except _GONE:
            continue
    shallowest = {g: min(depth[p.pid] for p in members) for g, members in groups.items()}
    return {g: groups[g] for g in sorted(groups, key=shallowest.__getitem__)}


def _wait_stopped(processes: list[psutil.Process], timeout: float) -> None:
    """Poll until every process is stopped or gone (a stop is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(not _alive(p) or p.status() == psutil.STATUS_STOPPED for p in processes):
                return
        except _GONE:
            continue
        time.sleep(0.001)


def terminate_tree(
    pids: Iterable[int], polite_timeout: float = 5.0, term_timeout: float = 5.0
) -> TerminateReport:
    """End the pids' whole trees: SIGTERM, wait `polite_timeout`, SIGKILL, wait `term_timeout`.

    Raises ProcessesSurvived if anything outlives SIGKILL (uninterruptible sleep).
    """
    return terminate_processes(tree(pids), polite_timeout, term_timeout)


def terminate_processes(
    processes: Sequence[psutil.Process], polite_timeout: float, term_timeout: float
) -> TerminateReport:
    """Like `terminate_tree`, for a tree taken earlier (e.g. before its parents were killed).

    The tree is frozen with SIGSTOP first and re-scanned, so no process forks a child we
    do not know about; then SIGTERM and SIGCONT go to all, so each handles SIGTERM at once.
    """
    frozen = _freeze(processes)
    _send(frozen, signal.SIGTERM)
    _send(frozen, signal.SIGCONT)
    survivors = _wait_gone(frozen, polite_timeout)
    if survivors:
        survivors = _merge(survivors, tree(p.pid for p in survivors if _alive(p)))
        _send(survivors, signal.SIGKILL)
        stuck = _wait_gone(survivors, term_timeout)
        if stuck:
            raise ProcessesSurvived([p.pid for p in stuck])
    killed = {p.pid for p in survivors}
    return TerminateReport(
        terminated=[p.pid for p in frozen if p.pid not in killed], killed=sorted(killed)
    )


def uss_mb(pids: Iterable[int]) -> float:
    """Unique memory (USS) of the pids' trees in MiB: what ending them would give back.

    Falls back to RSS for a process whose USS we may not read.
    """
    total = 0
    for proc in tree(pids):
        try:
            try:
                total += proc.memory_full_info().uss
            except psutil.AccessDenied:
                total += proc.memory_info().rss
        except _GONE:
            continue
    return total / (1024 * 1024)


def _freeze(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP the processes, then their descendants until no new ones appear."""
    frozen: list[psutil.Process] = []
    pending = [p for p in processes if _alive(p)]
    while pending:
        _send(pending, signal.SIGSTOP)
        frozen = _merge(frozen, pending)
        known = {p.pid for p in frozen}
        pending = [p for p in tree(p.pid for p in frozen if _alive(p)) if p.pid not in known]
    return frozen


def _merge(first: list[psutil.Process], more: list[psutil.Process]) -> list[psutil.Process]:
    pids = {p.pid for p in first}
    return first + [p for p in more if p.pid not in pids]


def _send(processes: Iterable[psutil.Process], sig: int) -> None:
    for proc in processes:
        with contextlib.suppress(*_GONE):  # already exited: exactly what we wanted
            proc.send_signal(sig)  # checks the pid still names the same process


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie; our own zombie children are reaped on the way."""
    try:
        if not proc.is_running():
            return False
        if proc.status() != psutil.STATUS_ZOMBIE:
            return True
        if proc.ppid() == os.getpid():
            os.waitpid(proc.pid, os.WNOHANG)
        return False
    except (*_GONE, ChildProcessError):
        return False


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process is gone or `timeout` passes; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if _alive(p)]
    if alive and timeout > 0:
        with contextlib.suppress(OSError):  # no pidfds (an old kernel, a seccomp filter): poll
            _wait_exits(alive, deadline)
    delay = 0.002
    while True:
        alive = [p for p in alive if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _wait_exits(processes: list[psutil.Process], deadline: float) -> None:
    """Sleep until each process has exited or the deadline passes: a pidfd per process wakes
    us at its exit (reaped or not). A pid reused before its pidfd was opened is skipped."""
    fds: list[int] = []
    waiting = 0
    try:
        poller = select.poll()
        for proc in processes:
            try:
                fd = os.pidfd_open(proc.pid)
            except ProcessLookupError:
                continue  # gone already
            fds.append(fd)
            if proc.is_running():  # the pidfd is of this process, not of a pid's next owner
                poller.register(fd, select.POLLIN)
                waiting += 1
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                waiting -= 1
    finally:
        for fd in fds:
            os.close(fd)

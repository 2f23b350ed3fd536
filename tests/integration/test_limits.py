"""Resource limits on real processes: a memory hog is contained, its neighbour is untouched.

Each test uses its own cgroup root name, so nothing here meets a real fleet's `fleetd/`.
The `auto` backend is whatever this host allows (cgroup v1 or v2 when writable); `rlimit` is
the fallback forced on, so both paths run wherever the tests run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import procs
from infra.limits import Limits
from schemas.templates import Resources
from tests.integration.conftest import wait_until

MB = 1024 * 1024
HOG = "b = []\nwhile True:\n    b.append(bytearray(8 * 1024 * 1024))\n"
HOLD = (
    "import sys, time\nb = bytearray(int(sys.argv[1]) * 1024 * 1024)\n"
    "print('ready', flush=True)\ntime.sleep(600)\n"
)


@pytest.fixture(params=["auto", "rlimit"])
def limits(request: pytest.FixtureRequest) -> Iterator[Limits]:
    backend = None if request.param == "auto" else "rlimit"
    found = Limits(root=f"fleetd-test-{uuid.uuid4().hex[:8]}", backend=backend)
    try:
        yield found
    finally:
        found.close()


class Agent:
    """A stand-in for an agent's pane: a shell that waits for `go`, then runs `argv`."""

    def __init__(self, tmp: Path, name: str, argv: list[str]) -> None:
        self.go = tmp / f"{name}.go"
        script = f'while [ ! -e "{self.go}" ]; do sleep 0.02; done; exec "$@"'
        self.proc = subprocess.Popen(
            ["sh", "-c", script, name, *argv],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.id = name

    def start(self) -> None:
        self.go.touch()

    def close(self) -> None:
        procs.terminate_tree([self.proc.pid], 0.2, 2.0)
        self.proc.wait(timeout=5)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        agent.close()


def test_a_memory_hog_is_contained_and_its_neighbour_untouched(
    limits: Limits, agents: list[Agent], tmp_path: Path
) -> None:
    hog = Agent(tmp_path, "hog", [sys.executable, "-c", HOG])
    neighbour = Agent(tmp_path, "neighbour", [sys.executable, "-c", HOLD, "150"])
    agents += [hog, neighbour]
    assert limits.apply(hog.id, [hog.proc.pid], Resources(memory_mb=64)) == limits.backend
    limits.apply(neighbour.id, [neighbour.proc.pid], Resources(memory_mb=400))
    neighbour.start()
    assert neighbour.proc.stdout is not None
    assert neighbour.proc.stdout.readline() == b"ready\n"
    hog.start()

    status = hog.proc.wait(timeout=60)  # the hog would take all 24 GB if nothing stopped it
    if limits.backend.startswith("cgroup"):
        assert status == -signal.SIGKILL  # the kernel's OOM killer, inside the hog's cgroup only
        found = wait_until(lambda: limits.check(hog.id, [hog.proc.pid]), "an oom_kill count")
        assert found[0].resource == "memory_mb" and found[0].limit == 64
    else:
        assert status != 0  # its allocation failed against RLIMIT_AS (MemoryError)

    assert neighbour.proc.poll() is None
    rss = sum(p.memory_info().rss for p in procs.tree([neighbour.proc.pid]))
    assert rss > 140 * MB  # it kept all of the 150 MB it holds, well above the hog's limit
    assert limits.check(neighbour.id, [neighbour.proc.pid]) == []


def test_the_watchdog_reports_a_tree_over_its_memory_limit(
    agents: list[Agent], tmp_path: Path
) -> None:
    limits = Limits(root=f"fleetd-test-{uuid.uuid4().hex[:8]}", backend="rlimit")
    holder = Agent(tmp_path, "holder", [sys.executable, "-c", HOLD, "100"])
    agents.append(holder)
    holder.start()
    assert holder.proc.stdout is not None and holder.proc.stdout.readline() == b"ready\n"
    # Limits set on a tree that is already over them: rlimit cannot take memory back, the
    # watchdog sees it and says so once per episode.
    limits.apply(holder.id, [holder.proc.pid], Resources(memory_mb=50))
    found = limits.check(holder.id, [holder.proc.pid])
    assert [(x.resource, x.limit, x.enforced_by) for x in found] == [("memory_mb", 50, "watchdog")]
    assert found[0].value > 90
    assert limits.check(holder.id, [holder.proc.pid]) == []


def test_pids_limit(limits: Limits, agents: list[Agent], tmp_path: Path) -> None:
    forks = "for i in $(seq 20); do sleep 30 & done; wait"
    forker = Agent(tmp_path, "forker", ["sh", "-c", forks])
    agents.append(forker)
    limits.apply(forker.id, [forker.proc.pid], Resources(pids=6))
    forker.start()

    if limits.backend.startswith("cgroup"):
        found = wait_until(lambda: limits.check(forker.id, [forker.proc.pid]), "a refused fork")
        assert found[0].resource == "pids" and found[0].limit == 6
        assert len(procs.tree([forker.proc.pid])) <= 6
    else:
        # RLIMIT_NPROC counts all of the user's processes (and root is exempt): the watchdog,
        # counting the tree, is what notices.
        found = wait_until(lambda: limits.check(forker.id, [forker.proc.pid]), "pids over limit")
        assert found[0].resource == "pids" and found[0].enforced_by == "watchdog"


def test_lifetime_is_watched(limits: Limits) -> None:
    limits.apply("old", [], Resources(max_lifetime_s=0.0))
    found = wait_until(lambda: limits.check("old", []), "the lifetime exceeded")
    assert found[0].resource == "lifetime_s"
    assert limits.check("old", []) == []


def test_detection_explains_itself() -> None:
    limits = Limits(root=f"fleetd-test-{uuid.uuid4().hex[:8]}")
    try:
        assert limits.backend in ("cgroup-v2", "cgroup-v1", "rlimit")
        assert limits.support.why
        if limits.backend != "rlimit":
            assert limits.groups("a1")
            assert all(p.name == "a1" for p in limits.groups("a1").values())
    finally:
        limits.close()


def test_neighbour_cgroups_are_separate(limits: Limits) -> None:
    if limits.backend == "rlimit":
        pytest.skip("no cgroups with the rlimit backend")
    limits.apply("x1", [], Resources(memory_mb=10))
    limits.apply("x2", [], Resources(memory_mb=20))
    for controller, path in limits.groups("x1").items():
        assert path != limits.groups("x2")[controller]
    assert limits.adopt("x1", []) == []


def test_a_kept_cgroup_does_not_report_old_kills(
    limits: Limits, agents: list[Agent], tmp_path: Path
) -> None:
    if limits.backend == "rlimit":
        pytest.skip("no cgroups with the rlimit backend")
    hog = Agent(tmp_path, "k1", [sys.executable, "-c", HOG])
    agents.append(hog)
    limits.apply(hog.id, [hog.proc.pid], Resources(memory_mb=64))
    hog.start()
    hog.proc.wait(timeout=60)
    assert wait_until(lambda: limits.check(hog.id, []), "the oom kill")
    # A new incarnation of the agent (its actor restarted) finds the cgroup with its counts.
    limits.apply(hog.id, [], Resources(memory_mb=64))
    assert limits.check(hog.id, []) == []

"""The control plane under test for the load benchmark: a real `fleet up` and its processes.

"The control plane" is `fleet up` and every process under it (the embedded nats-server, the
gateway, templates, ports, health and notifications services) plus the local Ray daemon it
runs beside itself (GCS, raylet, Ray's agents, and the Ray workers: supervisor, agent actors,
node services; infra/raycluster.py). Memory and CPU are sampled over all of them.

A crash of the control plane (`kill9`) is a kill -9 of `fleet up`'s own process group: the
`fleet up` process and its nats-server. The Ray daemon lives on beside it in a session of its
own, like the agents' tmux server and the shells and HTTP services in it, which belong to the
agents and outlive the control plane by design; the next `fleet up` joins that Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infra import raycluster

REPO = Path(__file__).resolve().parents[2]
GUARD_S = 600.0  # only keeps a hung child from hanging the run


@dataclass
class Uss:
    """Unique memory (USS: pages no other process shares) of the control plane's processes."""

    total_mb: float = 0.0
    processes: int = 0
    smallest_worker_mb: float = 0.0  # the smallest Ray worker (`ray::...`) of the tree
    base_mb: float = 0.0  # the same plane before any agent was spawned

    base_worker_mb: float = 0.0  # `smallest_worker_mb` of that plane

    def per_agent_mb(self, agents: int) -> float:
        return (self.total_mb - self.base_mb) / max(1, agents)


@dataclass
class Plane:
    env: dict[str, str]
    base_uss: Uss | None = None
    cpu_first: dict[int, float] = field(default_factory=dict)  # pid -> user+system s, first seen
    cpu_last: dict[int, float] = field(default_factory=dict)

    @classmethod
    def make(cls, root: Path, socket: str, agents: int) -> Plane:
        env = {
            **os.environ,
            "FLEET_STATE_DIR": str(root / "state"),
            "FLEET_TMUX_SOCKET": socket,
            "FLEET_POOL_SIZE": "0",
            "FLEET_MAX_AGENTS": str(max(agents, 200)),
            "FLEET_GATEWAY_PORT": "0",
        }
        for name in ("FLEET_NATS_URL", "FLEET_RAY_ADDRESS", "FLEET_NATS_CREDS"):
            env.pop(name, None)
        return cls(env)

    @property
    def state_file(self) -> Path:
        return Path(self.env["FLEET_STATE_DIR"]) / "fleet.json"

    def pid(self) -> int | None:
        if not self.state_file.exists():
            return None
        pid: int = json.loads(self.state_file.read_text())["pid"]
        return pid if psutil.pid_exists(pid) else None

    def start(self) -> float:
        """`fleet up --detach`; seconds until it wrote its state file (it is ready then)."""
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "up", "--detach"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=GUARD_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"fleet up failed: {done.stderr.strip() or done.stdout.strip()}")
        return time.perf_counter() - started

    @property
    def state_dir(self) -> Path:
        return Path(self.env["FLEET_STATE_DIR"])

    def tree(self) -> list[psutil.Process]:
        """`fleet up`, every process under it, and every process of its Ray daemon."""
        procs: list[psutil.Process] = []
        pid = self.pid()
        if pid is not None:
            top = psutil.Process(pid)
            procs += [top, *top.children(recursive=True)]
        daemon = raycluster.read_daemon(self.state_dir)
        if daemon is not None:
            procs += raycluster.processes(daemon)
        return procs

    def sample(self) -> float:
        """The tree's RSS now (MB), and each process's CPU time recorded for `cpu_s`."""
        rss = 0
        for proc in self.tree():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
            except psutil.Error:
                continue  # it ended meanwhile
            used = times.user + times.system + times.children_user + times.children_system
            self.cpu_first.setdefault(proc.pid, used)
            self.cpu_last[proc.pid] = used
        return rss / 2**20

    def uss(self) -> Uss:
        """The tree's USS now; RSS counts the pages Ray's workers share once per worker, so it
        says little per agent (reading smaps costs a few ms a process: not for every sample)."""
        base = self.base_uss or Uss()
        found = Uss(base_mb=base.total_mb, base_worker_mb=base.smallest_worker_mb)
        for proc in self.tree():
            try:
                uss = proc.memory_full_info().uss / 2**20
                argv = proc.cmdline()
            except psutil.Error:
                continue
            found.total_mb += uss
            found.processes += 1
            worker = bool(argv) and argv[0].startswith("ray::")
            if worker and (not found.smallest_worker_mb or uss < found.smallest_worker_mb):
                found.smallest_worker_mb = uss
        return found

    def cpu_s(self) -> float:
        """CPU seconds the tree used between the first and the last sample of each process."""
        return sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)

    def reset_cpu(self) -> None:
        self.cpu_first.clear()
        self.cpu_last.clear()

    def kill9(self) -> int:
        """SIGKILL `fleet up`'s process group (itself and its nats-server), as a crash of the
        control plane would; its Ray daemon lives on. How many processes were killed."""
        pid = self.pid()
        if pid is None:
            return 0
        procs = [p for p in psutil.process_iter() if _pgid(p.pid) == pid]
        os.killpg(pid, signal.SIGKILL)  # `fleet up --detach` leads its own session and group
        psutil.wait_procs(procs, timeout=30)
        return len(procs)

    def stop(self) -> None:
        """A clean stop (SIGINT), which ends the Ray daemon too; whatever is left is killed."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
            try:
                psutil.Process(pid).wait(120)
            except psutil.TimeoutExpired:
                self.kill9()
        daemon = raycluster.read_daemon(self.state_dir)
        if daemon is not None:
            raycluster.stop_daemon(self.state_dir, daemon)

    def end_agents(self) -> None:
        """Kill the agents' tmux server and whatever its panes still run."""
        socket = self.env["FLEET_TMUX_SOCKET"]
        found = subprocess.run(
            ["tmux", "-L", socket, "list-panes", "-a", "-F", "#{pane_pid}"],
            capture_output=True,
            text=True,
        )
        procs = []
        for pid in [int(p) for p in found.stdout.split() if p.isdigit()]:
            try:
                top = psutil.Process(pid)
                procs += [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                continue
        deadline = time.monotonic() + 10
        for proc in procs:  # one by one: psutil.wait_procs fails on one gone mid-wait (ENOENT)
            with contextlib.suppress(psutil.Error, OSError):
                proc.wait(max(0.0, deadline - time.monotonic()))


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1

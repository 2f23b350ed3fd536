"""Group `spawn`: warm and cold spawns to RUNNING, 50 cold spawns, stop, idle memory.

Floors, measured in the same run: `git worktree add` plus `tmux new-session -d` from a shell
(what spawning is, without fleetd), and the memory of an empty Ray actor worker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import ray
from nats.aio.client import Client

from actors import supervisor
from actors.agent import AgentConfig
from actors.supervisor import FleetConfig
from infra import procs
from infra.eventstore import EventStore
from infra.nats import connect
from infra.tmux import Tmux
from schemas import events as e
from schemas import subjects
from schemas.states import Lifecycle as L
from tests.perf.common import emit, git_repo, log, nats_and_ray, p50

WARM, COLD, MANY = 10, 8, 50


def make_repo(root: Path) -> Path:
    def fill(repo: Path) -> None:
        for i in range(50):
            (repo / f"file{i}.txt").write_text(f"line {i}\n" * 20)

    return git_repo(root, fill)


def shell_floor(repo: Path, root: Path, socket: str, n: int) -> float:
    """p50 ms of `git worktree add -b` + `tmux new-session -d`, from a shell."""
    samples = []
    for i in range(n):
        script = (
            f"git -C {repo} worktree add -q -b floor/{i} {root}/floor{i} HEAD && "
            f"tmux -L {socket} new-session -d -s floor{i} -c {root}/floor{i}"
        )
        t = time.perf_counter()
        subprocess.run(["sh", "-c", script], check=True, capture_output=True)
        samples.append((time.perf_counter() - t) * 1000)
    return p50(samples)


async def spawn(nc: Client, repo: Path, name: str) -> dict[str, Any]:
    payload = msgspec.json.encode({"repo": str(repo), "name": name, "template": "shell"})
    msg = await nc.request(subjects.control("spawn"), payload, timeout=300)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if not reply.get("ok"):
        raise RuntimeError(f"spawn {name} failed: {reply}")
    return reply


def start_fleet(nats_url: str, root: Path, pool: int, tag: str) -> Any:
    agent = AgentConfig(
        nats_url=nats_url,
        state_dir=str(root / f"state-{tag}"),
        worktree_root=str(root / f"worktrees-{tag}"),
        tmux_socket=f"bench-{tag}",
        namespace=f"bench-{tag}",
    )
    handle = supervisor.start(FleetConfig(agent=agent, pool_size=pool, max_agents=500))
    ray.get(handle.known.remote())
    return handle


async def timed_spawns(
    nc: Client, repo: Path, prefix: str, n: int, handle: Any, warm: bool
) -> list[float]:
    samples = []
    for i in range(n):
        if warm:
            await _pool_ready(handle)
        t = time.perf_counter()
        reply = await spawn(nc, repo, f"{prefix}{i}")
        samples.append((time.perf_counter() - t) * 1000)
        assert reply["pooled"] is warm, reply["pooled"]
    return samples


async def _pool_ready(handle: Any) -> None:
    while not await handle.pool_size.remote():
        await asyncio.sleep(0.05)


def empty_actor_uss() -> float:
    @ray.remote(num_cpus=0)
    class Empty:
        def pid(self) -> int:
            return os.getpid()

    actor = Empty.remote()  # type: ignore[attr-defined]
    pid = ray.get(actor.pid.remote())
    time.sleep(1.0)
    uss = procs.uss_mb([pid])
    ray.kill(actor)
    return uss


def agent_uss(view: dict[str, Any], socket: str) -> float:
    """The actor worker plus the session's pane processes, not the assistant itself."""
    panes = Tmux(socket).pane_pids(view["tmux"]["session"])
    total = psutil.Process(view["actor"]["pid"]).memory_full_info().uss
    for pid in panes:
        total += psutil.Process(pid).memory_full_info().uss  # the waiting /bin/sh wrapper
    return total / 2**20


async def run(nats_url: str, root: Path) -> None:
    repo = make_repo(root)
    nc = await connect(nats_url)
    floor = shell_floor(repo, root, "bench-floor", WARM)
    warm_fleet = start_fleet(nats_url, root, 1, "warm")
    warm = await timed_spawns(nc, repo, "w", WARM, warm_fleet, warm=True)
    emit("spawn_warm_p50_ms", p50(warm), "ms", floor, "target ratio <= 3")
    await warm_fleet.set_pool_size.remote(0)  # from now on every spawn starts a new actor
    cold = await timed_spawns(nc, repo, "c", COLD, warm_fleet, warm=False)
    emit("spawn_cold_p50_ms", p50(cold), "ms", floor, "target <= 1000")
    log(f"spawn: {MANY} cold spawns at once")
    t = time.perf_counter()
    await asyncio.gather(*(spawn(nc, repo, f"m{i}") for i in range(MANY)))
    many = time.perf_counter() - t
    emit(
        "spawn_50_cold_s",
        many,
        "s",
        p50(cold) * MANY / 1000,
        "target <= 40; floor: 50 x one cold spawn",
    )
    await _stop_and_memory(nc, repo, root)
    await nc.close()


async def _stop_and_memory(nc: Client, repo: Path, root: Path) -> None:
    idle = [agent_uss((await _show(nc, f"w{i}"))["agent"], "bench-warm") for i in range(WARM)]
    emit(
        "agent_idle_uss_mb",
        p50(idle),
        "MB",
        empty_actor_uss(),
        "target <= 60; floor: an empty Ray actor",
    )
    samples = []
    for i in range(WARM):
        t = time.perf_counter()
        msg = await nc.request(subjects.command(f"w{i}"), b'{"type": "stop"}', timeout=60)
        samples.append((time.perf_counter() - t) * 1000)
        reply = msgspec.json.decode(msg.data)
        assert reply.get("agent", {}).get("lifecycle") == "STOPPED", reply
    floor = []
    for i in range(WARM):
        t = time.perf_counter()
        subprocess.run(
            ["tmux", "-L", "bench-floor", "new-session", "-d", "-s", f"s{i}"], check=True
        )
        subprocess.run(["tmux", "-L", "bench-floor", "kill-session", "-t", f"=s{i}"], check=True)
        floor.append((time.perf_counter() - t) * 1000)
    emit("stop_p50_ms", p50(samples), "ms", p50(floor), "floor: tmux new-session + kill-session")
    await _where_stops_went(nc)


async def _where_stops_went(nc: Client) -> None:
    """From each stopped agent's log: how long its checkpoint, its session's end and the rest
    took (medians), logged beside the figure."""
    phases: dict[str, list[float]] = {"checkpoint": [], "session": [], "after": []}
    store = EventStore(nc)
    for i in range(WARM):
        log_ = [s.event for s in await store.read(f"w{i}") if s.event is not None]
        stopping = [
            ev.at for ev in log_ if isinstance(ev, e.LifecycleChanged) and ev.to is L.STOPPING
        ]
        taken = [ev.at for ev in log_ if isinstance(ev, e.CheckpointTaken)]
        closed = [ev.at for ev in log_ if isinstance(ev, e.SessionClosed)]
        stopped = [
            ev.at for ev in log_ if isinstance(ev, e.LifecycleChanged) and ev.to is L.STOPPED
        ]
        if not (stopping and taken and closed and stopped):
            continue
        ms = [
            (b - a).total_seconds() * 1000
            for a, b in (
                (stopping[-1], taken[-1]),
                (taken[-1], closed[-1]),
                (closed[-1], stopped[-1]),
            )
        ]
        for name, value in zip(phases, ms, strict=True):
            phases[name].append(value)
    if phases["checkpoint"]:
        log(
            "spawn: a stop's time, medians: "
            + ", ".join(f"{name} {p50(values):.0f} ms" for name, values in phases.items())
        )


async def _show(nc: Client, agent_id: str) -> dict[str, Any]:
    msg = await nc.request(subjects.command(agent_id), b'{"type": "show"}', timeout=30)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-spawn-") as tmp:
        root = Path(tmp)
        async with nats_and_ray(root, "bench-warm", "bench-floor") as server:
            await run(server.url, root)

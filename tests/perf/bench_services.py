"""Group `services`: dev services of agents (restart latency, probe throughput).

- `restart_latency_p50_ms`: kill -9 of a service to its new process running, fleetd (default
  backoff: 0.1 s first delay) against supervisord (`autorestart=true`) restarting the same
  command in the same run. The new process writes its own start time, so no polling is timed.
- `probes_per_s`: HTTP readiness probes (infra.probes, a raw HTTP/1.0 GET) against 1,000 local
  servers, per CPU-second of the prober, scaled to half a core; the floor is the same probes
  made with an aiohttp ClientSession.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import ray

from actors.agent import AgentActor
from actors.supervisor import AGENT_PREFIX, agent_options
from schemas.control import SpawnRequest
from schemas.templates import Permissions, RestartSpec, ServiceSpec, Template
from tests.perf.bench_ports import bench_port_lease
from tests.perf.bench_spawn import make_repo, start_fleet
from tests.perf.common import emit, log, nats_and_ray, p50

KILLS = 15
STABLE_S = 1.0  # the run both supervisors need before a kill counts as a first failure
SERVICES = 1000
PROBE_SECONDS = 5.0
START_GUARD_S = 60.0  # a guard, not a measure: the first start on a loaded machine
# Each probe's timeout is a guard too: the figure is probes per CPU-second of the prober, and
# 1,000 probes at once against one server process take seconds on a loaded 2-core machine.
PROBE_GUARD_S = 30.0


def stamping_command(stamp: Path) -> list[str]:
    """A service that writes `<pid> <start time>` and then sleeps as that same pid."""
    return ["sh", "-c", f'echo "$$ $(date +%s.%N)" > {stamp}; exec sleep 1000000']


def read_stamp(stamp: Path) -> tuple[int, float] | None:
    try:
        pid, at = stamp.read_text().split()
        return int(pid), float(at)
    except (OSError, ValueError):
        return None


async def first_stamp(stamp: Path, who: str) -> None:
    """Wait for the service's first stamp; a service that writes none is a benchmark that
    cannot run, and says so."""
    deadline = time.monotonic() + START_GUARD_S
    while read_stamp(stamp) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{who}'s stamping service wrote no stamp to {stamp} within {START_GUARD_S:g} s "
                f"(it did not start, or may not write {stamp.parent})"
            )
        await asyncio.sleep(0.05)


async def kill_and_time(stamp: Path, n: int, who: str) -> list[float]:
    """Kill the stamping service `n` times; ms from each kill to its successor's start."""
    await first_stamp(stamp, who)
    samples = []
    for _ in range(n):
        await asyncio.sleep(STABLE_S + 0.3)
        old = read_stamp(stamp)
        if old is None:
            raise RuntimeError(f"{who}'s stamping service lost its stamp {stamp}")
        killed_at = time.time()
        os.kill(old[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (new := read_stamp(stamp)) is None or new[0] == old[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{who}'s stamping service did not come back within 30 s")
            await asyncio.sleep(0.01)
        samples.append((new[1] - killed_at) * 1000)
    return samples


# -- fleetd -----------------------------------------------------------------------------------


async def fleet_restarts(root: Path) -> list[float]:
    async with nats_and_ray(root, "bench-services") as server:
        handle = start_fleet(server.url, root, 0, "services")
        return await _fleet_restarts(server.url, root, handle)


async def _fleet_restarts(nats_url: str, root: Path, supervisor: Any) -> list[float]:
    from actors.agent import AgentConfig
    from actors.supervisor import FleetConfig

    # The agent's panes may write only what the sandbox grants (actors/agent/confine.py): the
    # stamp goes in a folder of its own that the template grants, as a user's would.
    stamps = root / "stamps"
    stamps.mkdir()
    stamp = stamps / "fleet.stamp"
    spec = ServiceSpec(
        command=stamping_command(stamp),
        restart=RestartSpec(policy="always", reset_after_s=STABLE_S),
    )
    granted = Permissions(paths=(str(stamps),))
    template = Template(name="shell", services={"svc": spec}, permissions=granted)
    agent = AgentConfig(
        nats_url=nats_url,
        state_dir=str(root / "state-services"),
        worktree_root=str(root / "worktrees-services"),
        tmux_socket="bench-services",
        namespace="bench-services",
    )
    config = FleetConfig(agent=agent, pool_size=0)
    remote: Any = ray.remote(AgentActor)
    actor = remote.options(**agent_options(AGENT_PREFIX + "r1", config)).remote(agent, "r1")
    await actor.use_template.remote(template)
    await supervisor.refind.remote()
    request = SpawnRequest(repo=str(make_repo(root)), name="r1", template="shell")
    reply = msgspec.json.decode(
        await actor.spawn.remote(request, "bash --noprofile --norc -i", False)
    )
    if not reply.get("ok"):
        raise RuntimeError(f"fleetd's agent r1 did not spawn: {reply['error']['message']}")
    return await kill_and_time(stamp, KILLS, "fleetd")


# -- supervisord ------------------------------------------------------------------------------


async def supervisord_restarts(root: Path) -> list[float]:
    stamp = root / "supervisord.stamp"
    conf = root / "supervisord.conf"
    # supervisord splits the line like a shell and expands %(name)s: a literal % is %%.
    command = " ".join(_quote(a) for a in stamping_command(stamp)).replace("%", "%%")
    conf.write_text(
        textwrap.dedent(f"""\
        [supervisord]
        nodaemon=true
        logfile={root}/supervisord.log
        pidfile={root}/supervisord.pid
        childlogdir={root}

        [program:svc]
        command={command}
        autorestart=true
        """)
    )
    binary = Path(sys.executable).parent / "supervisord"
    proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        return await kill_and_time(stamp, KILLS, "supervisord")
    finally:
        proc.terminate()
        proc.wait(10)


def _quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' if " " in arg else arg


async def bench_restart_latency(root: Path) -> None:
    log("services: supervisord restarts")
    floor = await supervisord_restarts(root)
    log("services: fleetd restarts")
    ours = await fleet_restarts(root)
    emit(
        "restart_latency_p50_ms",
        p50(ours),
        "ms",
        p50(floor),
        f"target ratio <= 0.2; fleetd's first backoff delay is 100 ms (+<=10% jitter); "
        f"floor: supervisord autorestart; max fleetd {max(ours):.0f} ms",
    )


# -- probes -----------------------------------------------------------------------------------

SERVERS = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
ANSWER = b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok"
class Answer(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, data):
        if b"\\r\\n\\r\\n" in data:
            self.t.write(ANSWER); self.t.close()
async def main(n):
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Answer, "127.0.0.1", 0, backlog=64) for _ in range(n)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1])))
"""


async def prober(mode: str, ports: list[int], seconds: float) -> dict[str, Any]:
    """Probe every port again and again (all at once) for `seconds`; count and CPU time, and
    why the first failed probe failed."""
    from infra import probes
    from schemas.templates import HttpProbe, Probe

    made = ok = 0
    check: Callable[[int], Awaitable[bool | str]]
    session: Any = None
    if mode == "raw":
        made_for = {
            p: Probe(http=HttpProbe(port=p, path="/healthz"), timeout_s=PROBE_GUARD_S)
            for p in ports
        }

        async def check(port: int) -> bool | str:
            result = await probes.check(made_for[port], ports={}, cwd=".", output=None)
            return result.ok or result.detail

    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=PROBE_GUARD_S),
        )

        async def check(port: int) -> bool | str:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                return 200 <= r.status < 300 or f"status {r.status}"

    why = ""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        results = await asyncio.gather(*(check(p) for p in ports), return_exceptions=True)
        made += len(results)
        ok += sum(1 for r in results if r is True)
        why = why or next((repr(r) for r in results if r is not True), "")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if session is not None:
        await session.close()
    return {"probes": made, "ok": ok, "cpu_s": cpu, "wall_s": wall, "first_failure": why}


def run_prober(mode: str, ports: list[int]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.perf.bench_services", "prober", mode, str(PROBE_SECONDS)],
        input=" ".join(map(str, ports)),
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


async def bench_probes(root: Path) -> None:
    del root
    log(f"services: {SERVICES} local HTTP servers")
    servers = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", SERVERS, str(SERVICES)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert servers.stdout is not None
        ports = [int(p) for p in servers.stdout.readline().split()]
        results = {}
        for mode in ("aiohttp", "raw"):
            log(f"services: probing with {mode} for {PROBE_SECONDS:g} s")
            results[mode] = r = run_prober(mode, ports)
            log(f"  {r}")
            if r["ok"] != r["probes"]:
                raise RuntimeError(
                    f"{r['probes'] - r['ok']} of {r['probes']} probes with {mode} failed, "
                    f"the first with {r['first_failure']}"
                )
    finally:
        servers.terminate()
        servers.wait(10)

    def half_core(r: dict[str, Any]) -> float:
        return r["probes"] / r["cpu_s"] * 0.5

    raw, aio = results["raw"], results["aiohttp"]
    emit(
        "probes_per_s",
        half_core(raw),
        "probes/s",
        half_core(aio),
        f"target >= 1000; per CPU-second of the prober x 0.5 core, {SERVICES} servers; "
        f"unthrottled: {raw['probes'] / raw['wall_s']:.0f}/s at "
        f"{raw['cpu_s'] / raw['wall_s']:.2f} core; floor: the same with aiohttp",
    )


BENCHES: list[Callable[[Path], Awaitable[None]]] = [
    bench_port_lease,
    bench_probes,
    bench_restart_latency,
]


async def main() -> None:
    for bench in BENCHES:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-services-") as tmp:
            await bench(Path(tmp))


if __name__ == "__main__" and sys.argv[1:2] == ["prober"]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(20000, hard), hard))
    found = [int(p) for p in sys.stdin.read().split()]
    print(json.dumps(asyncio.run(prober(sys.argv[2], found, float(sys.argv[3])))))

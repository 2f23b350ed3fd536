"""Group `load`: many agents under a steady load, then a kill -9 of the whole control plane.

N agents (`FLEET_BENCH_LOAD_AGENTS`, default 200), each a shell with one HTTP service whose
readiness and liveness the health service probes every 2 s (Kubernetes' default is 10 s; at 0.5
s readiness the probes alone, 500 a second, took a third of this 2-core machine), run for
`FLEET_BENCH_LOAD_S` seconds (default 600) while mail flows (sent to random agents at every
priority, read and acked by a reader) and commands flow (`send` of a line typed into the
agent's shell, each an `input.sent` event). Then the control plane crashes: `fleet up`'s
process group (`fleet up` and its nats-server) is killed with SIGKILL (tests/perf/plane.py).
Its local Ray daemon, with the supervisor and agent actors in it, lives on beside it, as the
agents' tmux server does. `fleet up` is started again, and the time until it lists all N agents
RUNNING again (each actor answering) is taken.

Figures:
- `load_<N>_agents_lost`: acknowledged commands whose `input.sent` is not in the agent's log,
  plus acknowledged mail neither read nor still stored. Floor: 0 (the target).
- `load_<N>_agents_mem_growth_pct`: the control plane's RSS, median of the last 3 samples
  against the median of the first 3 after warm-up. Floor: 5 (the issue's target; no
  measured floor).
- `load_<N>_agents_control_plane_cpu_cores`: the control plane's CPU over the load phase, in
  cores. Floor: the same control plane, idle with no agents, measured in this run.
- `recovery_after_control_plane_kill_s`: from the new `fleet up` to all N agents re-adopted.
  Floor: the first `fleet up` of this run, with no agents (its start with nothing to adopt).

Run a short one with `FLEET_BENCH_LOAD_AGENTS=20 FLEET_BENCH_LOAD_S=60 just bench load`;
`FLEET_BENCH_LOAD_DIR=<new dir>` keeps its state dir (and `fleet-up.log`) there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from infra.config import Settings
from infra.eventstore import EventStore
from infra.mailbox import Mailbox
from schemas import commands as c
from schemas import events as e
from schemas import mail as m
from schemas import subjects
from schemas.control import ListRequest, SpawnRequest
from schemas.errors import FleetError, RemoteError
from schemas.replies import Reply
from schemas.templates import ApplyTemplate
from schemas.wire import AgentReply, AgentsReply
from services.cli.client import FleetClient, open_client
from tests.perf.common import emit, git_repo, log
from tests.perf.plane import Plane, Uss

SAMPLE_S = 5.0
CMD_TIMEOUT_S = 10.0  # a command with no reply in this long is counted unanswered
SPAWNING = 4  # spawns in flight
RECOVERY_LIMIT_S = 900.0

TEMPLATE = """\
name: load
extends: shell
services:
  web:
    command: python3 -m http.server --bind 127.0.0.1 "$PORT"
    ports: [http]
    readiness:
      http: {port: http, path: /}
      period_s: 2
    liveness:
      http: {port: http, path: /}
      period_s: 2
"""


def knob(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


@dataclass
class Tally:
    inputs: dict[str, set[str]] = field(default_factory=dict)  # agent -> acked texts
    mail_sent: dict[str, str] = field(default_factory=dict)  # message id -> agent
    mail_read: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, MB)
    cmd_ms: list[float] = field(default_factory=list)  # round trip of every answered command
    echo_ms: list[float] = field(default_factory=list)  # the floor: a raw NATS echo meanwhile
    unanswered: list[str] = field(default_factory=list)  # no reply at all within the timeout
    busy: int = 0  # answered `busy` (a sentence in time, nothing done)


def make_repo(root: Path) -> Path:
    return git_repo(root, lambda repo: (repo / "README.md").write_text("load\n"))


async def every(period_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        await step()
        left = period_s - (time.monotonic() - started)
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), left)


async def spawn_all(client: FleetClient, repo: Path, names: list[str]) -> list[str]:
    """Spawn every agent, a few at a time; the names that came up (a refused spawn is
    logged with its sentence, and the run goes on without that agent)."""
    gate = asyncio.Semaphore(SPAWNING)

    async def one(name: str) -> str | None:
        async with gate:
            req = SpawnRequest(repo=str(repo), name=name, template="load")
            try:
                await client.control("spawn", req, AgentReply, timeout=300)
            except FleetError as err:
                log(f"load: spawn of {name} refused: {err}")
                return None
            return name

    return [n for n in await asyncio.gather(*(one(n) for n in names)) if n is not None]


async def commands(client: FleetClient, names: list[str], tally: Tally, n: int) -> None:
    """One `send`, timed; a reply of any kind is an answer, a timeout is not."""
    agent = names[n % len(names)]
    text = f"echo load-{n}"
    started = time.perf_counter()
    try:
        await client.command(agent, c.Send(text=text), Reply, CMD_TIMEOUT_S)
    except RemoteError as err:
        if err.code == "timeout":
            tally.unanswered.append(f"send {agent}: {err}")
            return
        tally.cmd_ms.append((time.perf_counter() - started) * 1000)
        tally.busy += err.code == "busy"
        tally.failures.append(f"send {agent}: {err}")
        return
    except FleetError as err:
        tally.failures.append(f"send {agent}: {err}")
        return
    tally.cmd_ms.append((time.perf_counter() - started) * 1000)
    tally.inputs.setdefault(agent, set()).add(text)


async def echo(nc: Client, subject: str, tally: Tally) -> None:
    """The floor of a command's round trip under the same load: a bare NATS request to a
    responder in this process, which answers at once."""
    started = time.perf_counter()
    try:
        await nc.request(subject, b"ping", timeout=CMD_TIMEOUT_S)
    except (NatsError, TimeoutError) as err:
        tally.failures.append(f"echo: {err!r}")
        return
    tally.echo_ms.append((time.perf_counter() - started) * 1000)


async def send_mail(mailbox: Mailbox, names: list[str], tally: Tally) -> None:
    to = random.choice(names)
    message = m.MailMessage(from_="bench", body="load", id=uuid.uuid4().hex)
    try:
        await mailbox.send(to, message, random.choice(subjects.PRIORITIES))
    except (FleetError, NatsError, TimeoutError) as err:
        tally.failures.append(f"mail {to}: {err}")
        return
    tally.mail_sent[message.id] = to


async def read_mail(mailbox: Mailbox, names: list[str], tally: Tally) -> None:
    """Read (and ack) the mail of every agent that was sent some and not all of it read."""
    pending = {to for mid, to in tally.mail_sent.items() if mid not in tally.mail_read}
    for agent in sorted(pending.intersection(names)):
        try:
            got = await mailbox.read(agent, limit=200)
        except (FleetError, NatsError, TimeoutError) as err:
            tally.failures.append(f"read {agent}: {err}")
            continue
        for delivery in got:
            await delivery.ack()
            tally.mail_read.add(delivery.item.id)


async def drain_mail(mailbox: Mailbox, names: list[str], tally: Tally) -> None:
    for _ in range(5):
        await read_mail(mailbox, names, tally)
        if tally.mail_read >= set(tally.mail_sent):
            return


async def stored_mail(client: FleetClient, agents: set[str]) -> set[str]:
    """Ids of the messages the mail stream still holds for `agents` (nobody read them)."""
    js = client.nc.jetstream()
    held: set[str] = set()
    for agent in sorted(agents):
        for priority in subjects.PRIORITIES:
            subject, seq = subjects.mail(agent, priority), 0
            while True:
                try:
                    raw = await js.get_msg(
                        subjects.MAIL_STREAM, seq=seq + 1, subject=subject, next=True
                    )
                except NotFoundError:
                    break
                seq = raw.seq or seq + 1
                held.add(m.decode(raw.data or b"").id)
    return held


async def lost(client: FleetClient, tally: Tally) -> tuple[int, int]:
    """(acked inputs missing from the logs, acked mail neither read nor stored)."""
    store = EventStore(client.nc)
    missing_events = 0
    for agent, texts in tally.inputs.items():
        stored = {s.event.text for s in await store.read(agent) if isinstance(s.event, e.InputSent)}
        missing_events += len(texts - stored)
    unread = {mid: to for mid, to in tally.mail_sent.items() if mid not in tally.mail_read}
    held = await stored_mail(client, set(unread.values()))
    return missing_events, len(set(unread) - held)


async def all_running(client: FleetClient, count: int) -> bool:
    """Every agent listed RUNNING, and each one's actor answering a command itself (a listing
    alone may come from the supervisor's view of the log)."""
    try:
        agents = (await client.control("list", ListRequest(), AgentsReply, timeout=60)).agents
        if len(agents) < count or any(a.lifecycle != "RUNNING" for a in agents):
            return False
        shown = await asyncio.gather(
            *(client.command(a.id, c.Show(), AgentReply, 30) for a in agents)
        )
    except FleetError:
        return False
    return all(s.agent.lifecycle == "RUNNING" for s in shown)


async def idle_cpu(plane: Plane, seconds: float) -> float:
    """Cores the control plane uses with no agents: the CPU floor."""
    plane.reset_cpu()
    plane.sample()
    await asyncio.sleep(seconds)
    plane.sample()
    return plane.cpu_s() / seconds


async def load_phase(plane: Plane, names: list[str], tally: Tally, seconds: float) -> float:
    """Mail, commands and RSS samples for `seconds`; the control plane's cores meanwhile."""
    mail_rate = int(knob("FLEET_BENCH_LOAD_MAIL_RATE", 20))
    cmd_rate = int(knob("FLEET_BENCH_LOAD_CMD_RATE", 10))
    stop = asyncio.Event()
    sent = iter(range(10**9))
    settings = Settings.from_env(plane.env)
    async with open_client(settings) as client:
        mailbox = Mailbox(client.nc)

        async def mail_tick() -> None:
            await asyncio.gather(*(send_mail(mailbox, names, tally) for _ in range(mail_rate)))

        async def answer(msg: Msg) -> None:
            await msg.respond(b"pong")

        echo_subject = client.nc.new_inbox()  # the control plane may publish anywhere
        await client.nc.subscribe(echo_subject, cb=answer)

        async def cmd_tick() -> None:
            await asyncio.gather(
                *(commands(client, names, tally, next(sent)) for _ in range(cmd_rate)),
                *(echo(client.nc, echo_subject, tally) for _ in range(cmd_rate)),
            )

        async def sample() -> None:
            tally.rss.append((time.monotonic(), await asyncio.to_thread(plane.sample)))

        plane.reset_cpu()
        started = time.monotonic()
        tasks = [
            asyncio.create_task(every(1.0, stop, mail_tick)),
            asyncio.create_task(every(1.0, stop, cmd_tick)),
            asyncio.create_task(every(2.0, stop, lambda: read_mail(mailbox, names, tally))),
            asyncio.create_task(every(min(SAMPLE_S, seconds / 20), stop, sample)),
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        cores = plane.cpu_s() / (time.monotonic() - started)
        await drain_mail(mailbox, names, tally)
        await mailbox.close()
    return cores


def growth_pct(rss: list[tuple[float, float]], warm_until: float) -> float:
    """Median of the last 3 samples against the first 3 after warm-up (single samples for a
    short run); -1 when there were too few samples after warm-up to say."""
    after = [mb for t, mb in rss if t >= warm_until]
    if len(after) < 2:
        return -1.0
    n = 3 if len(after) >= 6 else 1
    first, last = statistics.median(after[:n]), statistics.median(after[-n:])
    return (last - first) / first * 100


async def recover(plane: Plane, count: int) -> float:
    """kill -9 `fleet up`'s process group, start it again; seconds until all agents are back."""
    killed = plane.kill9()
    log(f"load: killed fleet up's process group ({killed} processes) with SIGKILL; Ray lives on")
    started = time.perf_counter()
    log(f"load: the new fleet up was ready after {plane.start():.1f} s")
    async with open_client(Settings.from_env(plane.env)) as client:
        while time.perf_counter() - started < RECOVERY_LIMIT_S:
            if await all_running(client, count):
                return time.perf_counter() - started
            await asyncio.sleep(0.2)
    return float("nan")


async def run(root: Path, count: int, seconds: float) -> None:
    plane = Plane.make(root, f"fleet-load-{os.getpid()}", count)
    tally = Tally()
    try:
        up_floor = plane.start()
        cpu_floor = await idle_cpu(plane, min(20.0, max(5.0, seconds / 10)))
        plane.base_uss = await asyncio.to_thread(plane.uss)
        names = [f"l{i:03d}" for i in range(count)]
        async with open_client(Settings.from_env(plane.env)) as client:
            applied = ApplyTemplate(source=TEMPLATE, file="load")
            await client.control("templates", applied, Reply)
            t = time.perf_counter()
            names = await spawn_all(client, make_repo(root), names)
            log(f"load: {len(names)} of {count} agents spawned in {time.perf_counter() - t:.1f} s")
        warm_s = knob("FLEET_BENCH_LOAD_WARMUP_S", min(60.0, seconds / 4))
        warm_until = time.monotonic() + warm_s
        cores = await load_phase(plane, names, tally, seconds)
        uss = await asyncio.to_thread(plane.uss)
        recovery = await recover(plane, len(names))  # the agents that came up
        async with open_client(Settings.from_env(plane.env)) as client:
            events_lost, mail_lost = await lost(client, tally)
        report(count, tally, growth_pct(tally.rss, warm_until), cores, cpu_floor)
        report_commands(count, tally, uss, len(names))
        emit(
            f"load_{count}_agents_lost",
            events_lost + mail_lost,
            "count",
            0.0,
            f"{events_lost} of {sum(map(len, tally.inputs.values()))} acked commands' events, "
            f"{mail_lost} of {len(tally.mail_sent)} acked mail; {len(tally.failures)} refused",
        )
        emit(
            "recovery_after_control_plane_kill_s",
            recovery,
            "s",
            up_floor,
            f"{count} agents re-adopted after kill -9 of fleet up's process group (its Ray "
            "daemon lives on); floor: fleet up with no agents, Ray started",
        )
    finally:
        plane.stop()
        plane.end_agents()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def report_commands(count: int, tally: Tally, uss: Uss, spawned: int) -> None:
    answered = len(tally.cmd_ms)
    emit(
        f"load_{count}_agents_unanswered",
        len(tally.unanswered),
        "commands",
        0.0,
        f"of {answered + len(tally.unanswered)} sends, none answered within {CMD_TIMEOUT_S:g} s;"
        f" {tally.busy} answered busy; {spawned} of {count} agents spawned; target 0",
    )
    emit(
        f"load_{count}_agents_cmd_p99_ms",
        p99(tally.cmd_ms),
        "ms",
        p99(tally.echo_ms),
        f"send to an agent, {answered} answered; floor: a raw NATS request/reply echo at the"
        " same rate meanwhile",
    )
    emit(
        f"load_{count}_agents_control_plane_uss_per_agent_mb",
        uss.per_agent_mb(spawned),
        "MB",
        uss.base_worker_mb,
        f"control-plane USS {uss.total_mb:.0f} MB over {uss.processes} processes, less the "
        f"same plane with no agents ({uss.base_mb:.0f} MB), per agent; floor: the smallest Ray "
        "worker (supervisor, node service) of the plane before any agent",
    )
    for line in tally.unanswered[:5]:
        log(f"load: unanswered: {line}")


def report(count: int, tally: Tally, growth: float, cores: float, cpu_floor: float) -> None:
    mbs = [mb for _, mb in tally.rss]
    emit(
        f"load_{count}_agents_mem_growth_pct",
        growth,
        "%",
        5.0,
        f"control-plane RSS {min(mbs):.0f}-{max(mbs):.0f} MB over {len(mbs)} samples; "
        "floor: the issue's target",
    )
    emit(
        f"load_{count}_agents_control_plane_cpu_cores",
        cores,
        "cores",
        cpu_floor,
        "fleet up's process tree (NATS, Ray, actors, services); floor: the same, idle",
    )
    for line in tally.failures[:5]:
        log(f"load: refused: {line}")


async def main() -> None:
    count = int(knob("FLEET_BENCH_LOAD_AGENTS", 200))
    seconds = knob("FLEET_BENCH_LOAD_S", 600)
    log(f"load: {count} agents for {seconds:.0f} s")
    keep = os.environ.get("FLEET_BENCH_LOAD_DIR", "").strip()
    if keep:  # the run's state dir and fleet-up.log stay there, for a look afterwards
        root = Path(keep).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=False)
        await run(root, count, seconds)
        return
    with tempfile.TemporaryDirectory(prefix="fleet-load-") as tmp:
        await run(Path(tmp), count, seconds)

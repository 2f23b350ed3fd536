"""Group `bus`: mail throughput and latency, priority inversions, a command's round trip.

Floors, measured in the same run: raw JetStream (publish_async windows plus a nats-py pull
consumer that fetches and acks) for mail throughput; a core NATS publish/subscribe at the same
steady rate for mail latency; a bare NATS request/reply echo for the command round trip.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import ray
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from actors import supervisor
from actors.agent import AgentConfig
from actors.supervisor import FleetConfig
from infra.mailbox import Mailbox
from infra.mailpull import MailPolicy
from infra.nats import connect
from schemas import subjects
from schemas.mail import MailMessage, rank
from tests.perf.bench_spawn import make_repo, spawn
from tests.perf.common import emit, fresh_nats, log, nats_and_ray, p50

THROUGHPUT_N, SENDERS, WINDOW, BATCH = 60_000, 4, 1_000, 1_000
STEADY_RATE, STEADY_S = 1_000, 5.0
INVERSION_N = 20_000
ROUNDTRIPS = 2_000
FAST = MailPolicy(send_rate=1e9, send_burst=1e9)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def drain(box: Mailbox, agent: str, n: int, got: list[Any] | None = None) -> None:
    """Read and ack `n` messages in batches, waiting on the doorbell when the box is empty."""
    seen = 0
    while seen < n:
        batch = await box.read(agent, BATCH)
        for delivery in batch:
            await delivery.msg.ack()
            if got is not None:
                got.append((time.perf_counter(), delivery.item))
        seen += len(batch)
        if not batch:
            await box.wait(agent, 1.0)


async def mail_throughput(nc: Client) -> None:
    box = Mailbox(nc, FAST)
    message = MailMessage(from_="bench", body="x" * 200)
    per = THROUGHPUT_N // SENDERS

    async def send(i: int) -> None:
        await Mailbox(nc, FAST).send_many([("rcpt", message, "normal")] * per, WINDOW)

    await box.wait("rcpt", 0)
    t = time.perf_counter()
    await asyncio.gather(drain(box, "rcpt", per * SENDERS), *(send(i) for i in range(SENDERS)))
    ours = per * SENDERS / (time.perf_counter() - t)
    emit("mail_throughput", ours, "msgs/s", await raw_throughput(nc), "target >= 15000")


async def raw_throughput(nc: Client) -> float:
    """Raw JetStream: publish_async windows and one pull consumer fetching and acking."""
    js = nc.jetstream()
    subject, data = subjects.mail("raw", "normal"), b"x" * 260
    sub = await js.pull_subscribe(
        subject,
        durable="raw",
        stream=subjects.MAIL_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000),
    )
    n = THROUGHPUT_N // SENDERS * SENDERS

    async def publish() -> None:
        for _ in range(0, n, WINDOW):
            futures = [await js.publish_async(subject, data) for _ in range(WINDOW)]
            await asyncio.gather(*futures)

    async def consume() -> None:
        seen = 0
        while seen < n:
            try:
                msgs = await sub.fetch(BATCH, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            seen += len(msgs)

    t = time.perf_counter()
    await asyncio.gather(consume(), publish())
    return n / (time.perf_counter() - t)


async def mail_p99(nc: Client) -> None:
    sender, reader = Mailbox(nc, FAST), Mailbox(nc, FAST)
    await reader.wait("steady", 0)
    n = int(STEADY_RATE * STEADY_S)
    sent: dict[str, float] = {}
    got: list[tuple[float, Any]] = []

    async def send() -> None:
        start = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / STEADY_RATE - time.perf_counter()))
            sent[str(i)] = time.perf_counter()
            await sender.send("steady", MailMessage(from_="bench", body=str(i)), "normal")

    await asyncio.gather(drain(reader, "steady", n, got), send())
    ours = [(at - sent[item.body]) * 1000 for at, item in got]
    note = f"target <= 5; p50 {p50(ours):.2f} ms"
    emit("mail_p99_ms", p99(ours), "ms", await core_p99(nc), note)


async def core_p99(nc: Client) -> float:
    """Core NATS publish to subscriber at the same steady rate."""
    n = int(STEADY_RATE * STEADY_S)
    latencies: list[float] = []
    done = asyncio.Event()

    async def on(msg: Msg) -> None:
        latencies.append((time.perf_counter() - float(msg.data)) * 1000)
        if len(latencies) == n:
            done.set()

    sub = await nc.subscribe(subjects.topic("bench.core"), cb=on)
    start = time.perf_counter()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / STEADY_RATE - time.perf_counter()))
        await nc.publish(subjects.topic("bench.core"), str(time.perf_counter()).encode())
    await asyncio.wait_for(done.wait(), 30)
    await sub.unsubscribe()
    return p99(latencies)


# one message as the reader was handed it: its priority's rank, its stream sequence and
# JetStream's time stamp of its store (seconds, the clock `time.time` reads)
Stamp = tuple[int, int, float]


async def priority_inversions(nc: Client) -> None:
    """Two senders store mixed priorities (one awaited publish at a time each) while a reader
    with the doorbell hung reads in batches of 50 and acks; all three on one connection. What
    counts as an inversion is said by `count_inversions`."""
    reader = Mailbox(nc, FAST)
    await reader.wait("prio", 0)
    reads: list[tuple[float, list[Stamp]]] = []
    rng = random.Random(7)
    prios = [rng.choice(subjects.PRIORITIES) for _ in range(INVERSION_N)]

    async def send(part: int) -> None:
        box = Mailbox(nc, FAST)
        for i in range(part, INVERSION_N, 2):
            await box.send("prio", MailMessage(from_="bench", body=str(i)), prios[i])

    async def read() -> None:
        seen = 0
        while seen < INVERSION_N:
            began = time.time()
            batch = await reader.read("prio", 50)
            for d in batch:
                await d.ack()
            stamps = [
                (rank(d.item.priority), d.item.seq, d.msg.metadata.timestamp.timestamp())
                for d in batch
            ]
            reads.append((began, stamps))
            seen += len(batch)
            if not batch:
                await reader.wait("prio", 1.0)

    await asyncio.gather(read(), send(0), send(1))
    note = f"target 0; {sum(1 for _, s in reads if s)} reads"
    emit("priority_inversions", count_inversions(reads), "messages", 0.0, note)


def count_inversions(reads: list[tuple[float, list[Stamp]]]) -> int:
    """How many messages a read was handed while a message of higher priority, handed out only
    by a later read, was already in the stream, which is when either holds:

    - it was stored before the read began: JetStream's time stamp of the store (taken as it
      stores, under the store's lock; its PubAck is sent only after) is earlier than the
      `time.time()` taken before `read` was called, on the same machine's clock;
    - it was stored before a message the reader had already been handed, by this read or an
      earlier one: it has the smaller stream sequence (FLEET_MAIL numbers messages in the
      order it stores them, every priority alike), so no clock is involved.

    Either way the message was in the store before the read handed anything out, and its ring
    had reached the reader: on one connection the server writes the ring as it routes the
    publish, before the store, so before the answer to any pull (or ping) sent after it. A
    read that hands out lower mail then is wrong, and counted, even if its pull was answered
    404 (a `no_wait` pull is answered from the consumer's count of pending messages, which
    lags the store: infra/mailpull.py). Not counted: a higher message stored after the read
    began and after everything it was handed, which only asking again after the read decided
    could have found.

    The reads are walked from the last: `earliest[r]` and `lowest[r]` are the earliest store
    time and the lowest sequence of the messages of rank r handed out by later reads."""
    horizons, top = [], 0  # per read: the highest sequence handed out by then
    for _, items in reads:
        top = max([top, *(seq for _, seq, _ in items)])
        horizons.append(top)
    earliest = [float("inf")] * len(subjects.PRIORITIES)
    lowest = [float("inf")] * len(subjects.PRIORITIES)
    inversions = 0
    for (began, items), horizon in zip(reversed(reads), reversed(horizons), strict=True):
        waiting = [r for r in range(len(earliest)) if earliest[r] < began or lowest[r] < horizon]
        if waiting:
            inversions += sum(1 for r, _, _ in items if r > waiting[0])
        for r, seq, stored in items:
            earliest[r] = min(earliest[r], stored)
            lowest[r] = min(lowest[r], seq)
    return inversions


async def cmd_roundtrip(nc: Client, root: Path) -> None:
    repo = make_repo(root)
    config = AgentConfig(
        nats_url=nc.connected_url.geturl() if nc.connected_url else "",
        state_dir=str(root / "state"),
        worktree_root=str(root / "worktrees"),
        tmux_socket="bench-bus",
        namespace="bench-bus",
        cmd_rate=1e9,
        cmd_burst=1e9,
    )
    handle = supervisor.start(FleetConfig(agent=config, pool_size=1, max_agents=10))
    ray.get(handle.known.remote())
    await spawn(nc, repo, "rt")
    show, subject = b'{"type":"show"}', subjects.command("rt")

    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data)

    echo = await nc.subscribe(subjects.topic("bench.echo"), cb=respond)
    ours, floor = [], []
    for _ in range(ROUNDTRIPS // 2):  # alternate, so machine noise hits both alike
        t = time.perf_counter()
        reply = await nc.request(subject, show, timeout=10)
        ours.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await nc.request(subjects.topic("bench.echo"), show, timeout=10)
        floor.append((time.perf_counter() - t) * 1000)
    assert msgspec.json.decode(reply.data)["ok"]
    await echo.unsubscribe()
    emit("cmd_roundtrip_p50_ms", p50(ours), "ms", p50(floor), "target ratio <= 3")


async def main() -> None:
    for name, bench in (
        ("mail_throughput", mail_throughput),
        ("mail_p99_ms", mail_p99),
        ("priority_inversions", priority_inversions),
    ):
        log(f"bus: {name}")
        async with fresh_nats() as nc:
            await bench(nc)
    log("bus: cmd_roundtrip_p50_ms (starts Ray)")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-bus-") as tmp:
        root = Path(tmp)
        async with nats_and_ray(root, "bench-bus") as server:
            nc = await connect(server.url)
            try:
                await cmd_roundtrip(nc, root)
            finally:
                await nc.close()

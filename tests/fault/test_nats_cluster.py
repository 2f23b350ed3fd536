"""A 3-node NATS JetStream cluster (real nats-server processes): streams at 3 replicas, and a
node killed with SIGKILL in the middle of a load loses nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.eventstore import EventStore
from infra.mailbox import Mailbox
from infra.nats import connect, ensure_streams, replicas_for
from infra.natscluster import NatsCluster, wait_jetstream
from infra.natsserver import find_binary
from schemas import subjects
from tests.fault.load import Tally, append_until, lost_events, lost_mail, mail_until

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "nats"
GUARD_S = 45.0  # only stops a stuck load from hanging the suite; nothing is timed
WRITERS = 4


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "name", ["nats.conf", "cluster-n1.conf", "cluster-n2.conf", "cluster-n3.conf"]
)
def test_the_deploy_configs_are_valid(name: str) -> None:
    checked = subprocess.run(
        [str(find_binary()), "-t", "-c", str(DEPLOY / name)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    if name.startswith("cluster-"):
        assert "cluster {" in (DEPLOY / name).read_text()


async def test_a_lone_server_is_not_a_cluster(nats_url: str) -> None:
    nc = await connect(nats_url)
    try:
        assert replicas_for(nc) == 1
    finally:
        await nc.close()


async def test_a_node_killed_mid_load_loses_no_acknowledged_write(
    nats_cluster: NatsCluster,
) -> None:
    await wait_jetstream(nats_cluster.servers)
    nc = await connect(nats_cluster.url, name="fault-cluster")
    try:
        js = nc.jetstream()
        assert replicas_for(nc) == 3
        await ensure_streams(js, replicas_for(nc))
        await ensure_streams(js)  # a process asking for 1 replica must not shrink the streams
        for stream in (subjects.EVENTS_STREAM, subjects.MAIL_STREAM):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
        store, mailbox = EventStore(nc), Mailbox(nc)
        tallies = [Tally() for _ in range(WRITERS + 1)]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(append_until(store, f"load-{i}", stop, tallies[i]))
            for i in range(WRITERS)
        ]
        tasks.append(asyncio.create_task(mail_until(mailbox, "load-mail", stop, tallies[-1])))

        def acked() -> list[int]:
            return [len(t.acked) for t in tallies]

        await until(lambda: min(acked()) >= 50, "50 acknowledged writes each before the kill")
        leader = (await js.stream_info(subjects.EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
        victim = next(n for n in nats_cluster.nodes if n.name == leader)
        victim.kill()
        before = acked()
        await until(
            lambda: all(a >= b + 50 for a, b in zip(acked(), before, strict=True)),
            "every writer to carry on after the leader died",
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), GUARD_S)
        for i in range(WRITERS):
            assert await lost_events(store, f"load-{i}", tallies[i]) == []
        assert await lost_mail(nc, "load-mail", tallies[-1]) == []
        new_leader = (await js.stream_info(subjects.EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
        assert new_leader != leader
    finally:
        await nc.close()

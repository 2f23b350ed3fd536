"""A 3-node NATS JetStream cluster (real nats-server processes): streams at 3 replicas, and a
node killed with SIGKILL in the middle of a load loses nothing that was acknowledged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.nats import connect, ensure_streams, replicas_for
from infra.natscluster import NatsCluster, wait_jetstream
from infra.natsserver import find_binary
from schemas import subjects
from tests.fault.load import Load, lost_events, lost_mail, until

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "nats"
GUARD_S = 45.0  # only stops a stuck load from hanging the suite; nothing is timed
WRITERS = 4


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
        load = Load.start(nc, WRITERS)
        await until(
            lambda: min(load.acked()) >= 50, "50 acknowledged writes each before the kill", GUARD_S
        )
        leader = (await js.stream_info(subjects.EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
        victim = next(n for n in nats_cluster.nodes if n.name == leader)
        victim.kill()
        before = load.acked()
        await until(
            lambda: load.carried_on(before),
            "every writer to carry on after the leader died",
            GUARD_S,
        )
        await load.finish(GUARD_S)
        for i in range(WRITERS):
            assert await lost_events(load.store, f"load-{i}", load.tallies[i]) == []
        assert await lost_mail(nc, "load-mail", load.tallies[-1]) == []
        new_leader = (await js.stream_info(subjects.EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
        assert new_leader != leader
    finally:
        await nc.close()

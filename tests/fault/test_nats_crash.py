"""kill -9 of the embedded nats-server under `fleet up`, in the middle of checked appends and
mail: `fleet up` restarts it on the same store, every acknowledged event and message is still
there, and the agent answers commands again."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import msgspec

from infra import natsauth, resend
from infra.nats import connect
from schemas import subjects
from tests.fault.load import Load, lost_events, lost_mail, until
from tests.fleetcli import fleet_cli, fleet_state

GUARD_S = 60.0  # only stops a stuck load from hanging the suite; nothing is timed
WRITERS = 2


async def test_a_killed_nats_server_loses_no_acknowledged_write(
    up_env: dict[str, str], repo: Path
) -> None:
    started = fleet_cli(up_env, "up", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    spawned = fleet_cli(up_env, "spawn", "--repo", str(repo), "--name", "a1", "--json")
    assert spawned.returncode == 0, spawned.stderr
    state = fleet_state(up_env)
    control = natsauth.read_credential(state["nats_creds"])  # fleet up's NATS has users
    nc = await connect(natsauth.with_credential(state["nats_url"], control), name="fault-load")
    try:
        load = Load.start(nc, WRITERS)
        await until(
            lambda: min(load.acked()) >= 50, "50 acknowledged writes each before the kill", GUARD_S
        )
        os.kill(state["nats_pid"], signal.SIGKILL)
        before = load.acked()
        await until(
            lambda: fleet_state(up_env)["nats_pid"] != state["nats_pid"],
            "fleet up to restart nats-server",
            GUARD_S,
        )
        await until(
            lambda: load.carried_on(before), "every writer to carry on after the restart", GUARD_S
        )
        await load.finish(GUARD_S)
        assert nc.stats["reconnects"] >= 1, "the kill never interrupted the load's connection"
        for i in range(WRITERS):
            assert await lost_events(load.store, f"load-{i}", load.tallies[i]) == []
        assert await lost_mail(nc, "load-mail", load.tallies[-1]) == []

        after = fleet_state(up_env)
        assert after["nats_url"] == state["nats_url"]  # the same port and store
        # As fleet's own clients ask (services/cli/client.py): with an id, sent again while the
        # agent's actor may still be reconnecting (the first copy can reach only the
        # supervisor's silent fallback; infra/resend.py), answered once.
        sent = b'{"type": "send", "text": "echo still here", "id": "after-restart"}'
        reply = await resend.request(nc, subjects.command("a1"), sent, timeout=GUARD_S)
        answered = msgspec.json.decode(reply.data)
        assert answered["ok"] is True, answered
        assert answered["agent"]["lifecycle"] == "RUNNING"
    finally:
        await nc.close()
    status = json.loads(fleet_cli(up_env, "status", "--json").stdout)
    assert status["nats_alive"] is True

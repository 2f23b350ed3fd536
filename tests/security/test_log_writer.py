"""The log has one writer: an agent cannot append to its own log or write its snapshot, and an
event its actor did not sign (a leaked control-plane publish) is refused and reported by every
reader that acts on events, while `fleet audit --verify` still names it.

Issue 14, item 4: a forged `workspace.ready` pointing at the state dir made the next restart
grant the pane write access to it; a forged `activity.changed` sent a phishing notification.
The attacker runs inside a real agent's pane with the agent's own NATS credential
(FLEET_NATS_URL, FLEET_NATS_CREDS), on a nats-server with users as `fleet up` runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from msgspec.structs import replace
from nats.aio.client import Client

from infra import fleetkey
from infra.config import Settings
from infra.eventstore import EventStore
from schemas import events as e
from schemas import subjects
from schemas.chain import Position, Snapshot, event_hash
from schemas.states import Activity
from services import notifier as n
from services.cli import live as cli_live
from services.cli.client import open_client
from tests.fleet.gateway_fixtures import run_gateway
from tests.fleet.health_fixtures import FAST, running_health
from tests.fleet.helpers import command, spawn, until
from tests.fleet.test_security_nats import (  # noqa: F401  (fixtures, by name)
    AuthFleet,
    auth_fleet,
    control,
    pane_env,
)
from tests.fleetcli import fleet_cli
from tests.security.pane import in_pane

pytestmark = pytest.mark.parametrize("auth_fleet", ["embedded"], indirect=True)

GUARD_S = 60.0
PHISH = "Your session expired: sign in again at https://evil.example/login"

# The attacker: the agent's own credential, a publish per target, then what the server said.
FORGE = """
import asyncio, json, os, sys
import nats

async def main():
    cred = json.load(open(os.environ["FLEET_NATS_CREDS"]))
    targets = json.load(open(sys.argv[1]))
    errors = []

    async def on_error(e):
        errors.append(str(e).lower())

    host = os.environ["FLEET_NATS_URL"].split("//", 1)[1]
    url = "nats://%s:%s@%s" % (cred["user"], cred["password"], host)
    nc = await nats.connect(url, inbox_prefix=cred["inbox_prefix"], error_cb=on_error,
                            allow_reconnect=False)
    for subject, payload in targets:
        await nc.publish(subject, payload.encode())
    await nc.flush()
    for _ in range(400):  # the server's -ERR follows each denied publish; a 20 s guard
        if len(errors) >= len(targets):
            break
        await asyncio.sleep(0.05)
    print(json.dumps(errors))
    await nc.close()

asyncio.run(main())
"""


def forged_ready(agent_id: str, prev_hash: str, path: str) -> bytes:
    event = e.WorkspaceReady(
        agent_id=agent_id, event_id=uuid.uuid4().hex, at=datetime.now(UTC), path=path,
        branch="fleet/" + agent_id, prev_hash=prev_hash,
    )  # fmt: skip
    return msgspec.json.encode(event)


def forged_waiting(agent_id: str, prev_hash: str, frm: Activity) -> bytes:
    event = e.ActivityChanged(
        agent_id=agent_id, event_id=uuid.uuid4().hex, at=datetime.now(UTC),
        to=Activity.AWAITING_INPUT, frm=frm, detail=PHISH, prev_hash=prev_hash,
    )  # fmt: skip
    return msgspec.json.encode(event)


async def tail(nc: Client, agent_id: str) -> tuple[int, str]:
    """The log's last stored sequence and the hash of its last event (what a forger chains to)."""
    rows = await EventStore(nc).read(agent_id)
    return rows[-1].seq, event_hash(rows[-1].raw)


async def snapshot_revision(nc: Client, agent_id: str) -> int | None:
    kv = await nc.jetstream().key_value(subjects.SNAPSHOTS_BUCKET)
    try:
        return (await kv.get(agent_id)).revision
    except Exception:  # no snapshot yet
        return None


async def test_an_agent_cannot_append_to_its_log_or_write_its_snapshot(
    auth_fleet: AuthFleet,  # noqa: F811
    control: Client,  # noqa: F811
    repo: Path,
) -> None:
    fleet = auth_fleet.fleet
    spawned = await spawn(control, str(repo), "lw1")
    assert spawned["ok"], spawned
    env = pane_env(fleet, "fleet-lw1")
    worktree = Path(env["FLEET_WORKTREE"])
    last, last_hash = await tail(control, "lw1")
    state = (await EventStore(control).load("lw1")).state
    lie = replace(state, worktree=str(fleet.state_dir))
    forged_snapshot = msgspec.json.encode(Snapshot(state=lie, position=Position(last, last_hash)))
    targets = [
        (subjects.events("lw1"), forged_ready("lw1", last_hash, str(fleet.state_dir)).decode()),
        (subjects.events("lw1"), forged_waiting("lw1", last_hash, state.activity).decode()),
        (subjects.events("lw1"), "garbage, not even JSON {{{"),
        (f"$KV.{subjects.SNAPSHOTS_BUCKET}.lw1", forged_snapshot.decode()),
        (f"$JS.API.STREAM.MSG.DELETE.{subjects.EVENTS_STREAM}", json.dumps({"seq": last})),
    ]
    revision = await snapshot_revision(control, "lw1")
    (worktree / ".forge.py").write_text(FORGE)
    (worktree / ".targets.json").write_text(json.dumps(targets))

    ran = await in_pane(
        control, "lw1", worktree, f"{sys.executable} .forge.py .targets.json"
    )  # fmt: skip

    assert ran.status == 0, ran.output
    said = " ".join(json.loads(ran.output.strip().splitlines()[-1]))
    for subject in {s for s, _ in targets}:
        assert f'permissions violation for publish to "{subject.lower()}"' in said, said
    # Nothing of it was stored: whatever the log holds after `last` is its actor's (typing the
    # script into the pane is recorded), signed and chained, and no snapshot is the forged one.
    store = EventStore(control, mac_key=fleetkey.load(fleet.state_dir))
    rows, refused = await store.read_checked("lw1")
    assert refused == [] and rows[-1].seq >= last
    for row in rows:
        assert b"garbage" not in row.raw and PHISH.encode() not in row.raw, row
        ready = row.event if isinstance(row.event, e.WorkspaceReady) else None
        assert ready is None or ready.path == str(worktree), row
    if await snapshot_revision(control, "lw1") != revision:
        kv = await control.jetstream().key_value(subjects.SNAPSHOTS_BUCKET)
        assert (await kv.get("lw1")).value != forged_snapshot
    shown = await command(control, "lw1", "show")
    assert shown["agent"]["worktree"] == str(worktree), shown
    # Nor can it take the control plane's NATS login, which is a file of the state dir.
    login = fleet.state_dir / "nats-auth" / "control.json"
    password = json.loads(login.read_text())["password"]
    took = await in_pane(control, "lw1", worktree, f"cat {login} && echo LOGIN; echo done")
    assert "LOGIN" not in took.output and password not in took.output, took.output


async def test_a_forged_event_is_refused_and_reported_by_every_reader(
    auth_fleet: AuthFleet,  # noqa: F811
    control: Client,  # noqa: F811
    repo: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    fleet = auth_fleet.fleet
    key = fleetkey.load(fleet.state_dir)
    spawned = await spawn(control, str(repo), "lw2")
    assert spawned["ok"], spawned
    worktree = (await command(control, "lw2", "show"))["agent"]["worktree"]
    notices = tmp_path / "notices.jsonl"
    (fleet.state_dir / n.CONFIG_FILE).write_text(
        f"channels:\n  log: {{type: log, path: '{notices}'}}\n"
    )
    settings = Settings(state_dir=fleet.state_dir)
    health_config = dataclasses.replace(FAST, mac_key=key)
    async with (
        aiohttp.ClientSession() as http,
        running_health(control, health_config) as health,
        n.running(settings, control),
        open_client() as client,
    ):
        async for gw in run_gateway(fleet.nats_url, fleet.state_dir):
            live = cli_live.LiveFleet()
            subs = await cli_live.follow(client, live, health=False)
            ws = await http.ws_connect(await gw.ws_url(http, "/ws/events?agent=lw2", "viewer"))
            fed: list[dict[str, Any]] = []
            reader = asyncio.create_task(_read_ws(ws, fed))
            try:
                forged = await _inject(control, "lw2", str(fleet.state_dir))
                await _check_actor(fleet, control, "lw2", worktree)
                await _check_readers(gw, http, health, live, fed, notices, forged)
                await until(
                    _logged(caplog, forged), "each reader in this process to log its refusals"
                )
            finally:
                reader.cancel()
                await ws.close()
                for sub in subs:
                    await sub.unsubscribe()

    audit = await asyncio.to_thread(fleet_cli, fleet.env, "audit", "lw2", "--verify")
    assert audit.returncode == 3, audit.stdout + audit.stderr
    for seq in forged:
        assert f"sequence {seq}" in audit.stdout + audit.stderr
    events = await asyncio.to_thread(fleet_cli, fleet.env, "events", "lw2", "--json")
    assert events.returncode == 0, events.stderr
    assert not {json.loads(line)["seq"] for line in events.stdout.splitlines()} & set(forged)
    shown = [json.loads(line) for line in events.stdout.splitlines()]
    assert not [r for r in shown if PHISH in json.dumps(r)], events.stdout
    assert not [r for r in shown if r.get("path") == str(fleet.state_dir)], events.stdout
    for seq in forged:
        assert f"agent lw2's event at sequence {seq} was refused" in events.stderr


async def _inject(nc: Client, agent_id: str, state_dir: str) -> list[int]:
    """A leaked control-plane publish: perfect chain links, the expected-sequence header, and
    no Fleet-Mac (the fleet key stays in the control plane)."""
    seqs = []
    last, last_hash = await tail(nc, agent_id)
    activity = Activity((await command(nc, agent_id, "show"))["agent"]["activity"])
    ready = forged_ready(agent_id, last_hash, state_dir)
    for raw in (ready, forged_waiting(agent_id, event_hash(ready), activity)):
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        ack = await nc.jetstream().publish(subjects.events(agent_id), raw, headers=headers)
        seqs.append(ack.seq)
        last = ack.seq
    return seqs


async def _check_actor(fleet: Any, nc: Client, agent_id: str, worktree: str) -> None:
    """The actor's own reload: after a refused append it reloads, and after its worker is
    killed it replays its log; neither time does the forgery change its state."""

    async def paused() -> bool:  # the first try may meet the forged tail: refused, reloaded
        reply = await command(nc, agent_id, "pause")
        return bool(reply.get("ok"))

    await until(paused, f"{agent_id} to take a pause after the forgery", GUARD_S)
    pid = (await command(nc, agent_id, "show"))["agent"]["actor"]["pid"]
    os.kill(pid, signal.SIGKILL)

    async def back() -> dict[str, Any] | None:
        try:
            reply = await command(nc, agent_id, "show", timeout=5)
        except Exception:
            return None
        actor = reply.get("agent", {}).get("actor", {})
        return reply if reply.get("ok") and actor.get("pid") not in (None, 0, pid) else None

    shown = await until(back, f"{agent_id}'s actor to come back from its log", GUARD_S)
    agent = shown["agent"]
    assert agent["worktree"] == worktree and agent["lifecycle"] == "PAUSED", agent
    assert PHISH not in agent["activity_detail"], agent
    listed = await _request_list(nc)
    mine = next(a for a in listed if a["id"] == agent_id)
    assert mine["worktree"] == worktree and PHISH not in mine["activity_detail"], mine


READERS = (
    "follower health",
    "follower notifications",
    "gateway event feed",
    "gateway metrics",
    "live view",
)


def _logged(caplog: pytest.LogCaptureFixture, forged: list[int]) -> Callable[[], Awaitable[bool]]:
    """Whether every in-process reader logged a refusal of each forged sequence."""

    async def check() -> bool:
        said = [r.getMessage() for r in caplog.records]
        return all(
            any(f"{name}: agent lw2's event at sequence {seq} was refused" in m for m in said)
            for name in READERS
            for seq in forged
        )

    return check


async def _request_list(nc: Client) -> list[dict[str, Any]]:
    msg = await nc.request(subjects.control("list"), b"{}", timeout=GUARD_S)
    agents: list[dict[str, Any]] = msgspec.json.decode(msg.data)["agents"]
    return agents


async def _check_readers(
    gw: Any,
    http: aiohttp.ClientSession,
    health: Any,
    live: cli_live.LiveFleet,
    fed: list[dict[str, Any]],
    notices: Path,
    forged: list[int],
) -> None:
    async def paused_everywhere() -> bool:
        watched = health.agents.get("lw2")
        return (
            any(ev.get("to") == "PAUSED" for ev in fed)
            and len(live.refused) >= len(forged)
            and watched is not None
            and watched.state.lifecycle.value == "PAUSED"
            and _refusal_notices(notices) >= len(forged)
        )

    await until(paused_everywhere, "every reader to pass the pause and refuse the forgery", GUARD_S)
    # the gateway's live feed and its REST events
    assert all(PHISH not in json.dumps(ev) and ev.get("type") != "workspace.ready" for ev in fed)
    async with http.get(gw.url + "/api/agents/lw2/events", headers=gw.headers("viewer")) as r:
        body = await r.json()
    assert r.status == 200 and not {row["seq"] for row in body["events"]} & set(forged), body
    # health: nothing of the forgery in the state it acts on
    watched = health.agents["lw2"]
    assert PHISH not in json.dumps(msgspec.to_builtins(watched.state))
    assert not any(ev.get("detail") == PHISH for ev in fed)
    # the live view (`fleet top`, `ls --watch`): refused, not folded
    assert [r.seq for r in live.refused] == forged

    # Prometheus: the gateway's metrics counted each refusal
    async def counted() -> bool:
        async with http.get(gw.url + "/metrics", headers=gw.headers("viewer")) as r:
            text = await r.text()
        return f'fleet_events_refused_total{{agent="lw2"}} {float(len(forged))}' in text

    await until(counted, "fleet_events_refused_total to count the forgeries", GUARD_S)
    assert PHISH not in live.states["lw2"].activity_detail
    # notifications: the refusal is reported, the phishing text never sent
    text = notices.read_text()
    assert PHISH not in text and "evil.example" not in text


def _refusal_notices(path: Path) -> int:
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(1 for row in rows if row.get("kind") == "log.refused" and row["agent_id"] == "lw2")


async def _read_ws(ws: aiohttp.ClientWebSocketResponse, into: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            into.extend(msgspec.json.decode(msg.data).get("events", []))

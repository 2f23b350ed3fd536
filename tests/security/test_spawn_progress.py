"""`fleet spawn`'s progress lines are only the real spawn's: a message on `fleet.evt.<id>` that
the agent's actor did not sign (published with the control plane's credential while the spawn
runs, stored or refused by JetStream) never shows a line, and the spawn itself goes on.

Before, the lines came from a core subscription: every such publish, even one JetStream refused
to store, was printed as the agent's progress.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from schemas import events as e
from schemas import subjects
from schemas.states import Lifecycle
from tests.conftest import Fleet
from tests.fleetcli import fleet_cli

LIE = "FORGED-PROGRESS-LINE"


def forged(agent_id: str, n: int) -> bytes:
    event = e.LifecycleChanged(
        agent_id=agent_id, event_id=uuid.uuid4().hex, at=datetime.now(UTC),
        to=Lifecycle.RUNNING, frm=Lifecycle.SPAWNING, reason=f"{LIE} {n}",
    )  # fmt: skip
    return msgspec.json.encode(event)


async def forge_until(nc: Client, agent_id: str, done: asyncio.Event) -> int:
    """Publish forgeries on the agent's subject until `done`: a plain publish (stored, with no
    Fleet-Mac) and one JetStream refuses to store (a wrong expected sequence); how many."""
    n = 0
    subject = subjects.events(agent_id)
    refused = {"Nats-Expected-Last-Subject-Sequence": "999999999"}
    js = nc.jetstream()
    while not done.is_set():  # from the agent's first event on (before it, a forgery would
        try:  # take the name: the spawn is refused as "already exists")
            await js.get_last_msg(subjects.EVENTS_STREAM, subject)
            break
        except NotFoundError:
            await asyncio.sleep(0.005)
    while not done.is_set():
        n += 1
        await nc.publish(subject, forged(agent_id, n))
        await nc.publish(subject, forged(agent_id, n), headers=refused)
        await nc.flush()
        await asyncio.sleep(0.02)
    return n


async def test_spawn_shows_only_the_lines_of_the_real_spawn(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    done = asyncio.Event()
    forger = asyncio.create_task(forge_until(nc, "sp1", done))

    async def spawned() -> tuple[int, str, str]:
        try:
            ran = await asyncio.to_thread(
                fleet_cli, fleet.env, "spawn", "--repo", str(repo), "--name", "sp1"
            )
        finally:
            done.set()
        return ran.returncode, ran.stdout, ran.stderr

    status, out, err = await spawned()
    sent = await forger

    assert sent >= 1, "no forgery was published while the spawn ran"
    assert status == 0, out + err
    lines = out.splitlines()
    assert LIE not in out, out  # not one forged line
    assert any(ln.split()[:2] == ["sp1", "workspace.ready"] for ln in lines if ln.strip()), out
    assert any(ln.split() == ["sp1", "RUNNING"] for ln in lines), out
    assert "no fleet key" not in err, err

"""A full disk under the JetStream store (a small tmpfs, else a loop-mounted ext4 file system):
appends fail with a FleetError sentence, the log stays whole (replay and audit verify pass),
and once space returns the store watcher restarts nats-server and appends work again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra import natsserver, storewatch
from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams
from schemas import commands as c
from schemas.agent import AgentState, decide, initial
from schemas.chain import Position
from schemas.errors import FleetError
from schemas.events import AgentEvent
from schemas.states import Activity
from services.auditor import AuditOptions, audit_agent

SIZE = "32m"
GUARD_S = 60.0  # only stops a stuck recovery from hanging the suite; nothing is timed
KEY = secrets.token_bytes(32)


def _mount(point: Path, image: Path) -> str:
    """Mount a small file system at `point`: tmpfs, else a loop-mounted ext4 image; or skip."""
    tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(point)]
    if subprocess.run(tmpfs, capture_output=True).returncode == 0:
        return "tmpfs"
    made = subprocess.run(
        f"truncate -s {SIZE} {image} && mkfs.ext4 -q {image} && mount -o loop {image} {point}",
        shell=True,
        capture_output=True,
        text=True,
    )
    if made.returncode == 0:
        return "loop"
    pytest.skip(f"neither a tmpfs nor a loop mount is permitted here: {made.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "disk"
    point.mkdir()
    _mount(point, tmp_path / "disk.img")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


@pytest.fixture
async def supervised(small_disk: Path) -> AsyncIterator[natsserver.NatsServer]:
    """A nats-server on the small disk, supervised and watched as `fleet up` does it."""
    server = natsserver.NatsServer.start(small_disk / "nats")
    tasks = [
        asyncio.create_task(natsserver.supervise(server)),
        asyncio.create_task(
            storewatch.watch_space(server.store_dir, lambda: server.pid, period_s=0.1)
        ),
    ]
    try:
        yield server
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server.stop()


def run(state: AgentState, cmd: c.AgentCommand) -> list[AgentEvent]:
    return decide(state, cmd, now=datetime.now(UTC), new_id=lambda: secrets.token_hex(16))


def fill(path: Path) -> None:
    with path.open("wb") as f, contextlib.suppress(OSError):  # ENOSPC: full
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()


async def test_a_full_disk_is_a_sentence_then_appends_recover(
    supervised: natsserver.NatsServer, small_disk: Path
) -> None:
    nc = await connect(supervised.url)
    try:
        await ensure_streams(nc.jetstream())
        store = EventStore(nc, mac_key=KEY, snapshot_every=10)
        state, pos = initial("a1"), Position()
        state, pos = await store.record(state, run(state, c.Create(name="a1")), pos)
        state, pos = await store.record(state, run(state, c.MarkRunning()), pos)

        def flip(state: AgentState) -> list[AgentEvent]:
            act = Activity.WORKING if state.activity is Activity.READY else Activity.READY
            return run(state, c.ObserveActivity(activity=act))

        for _ in range(20):
            state, pos = await store.record(state, flip(state), pos)

        filler = small_disk / "filler"
        fill(filler)
        assert storewatch.free_bytes(small_disk) < storewatch.LOW_BYTES
        refused: FleetError | None = None
        for _ in range(500):  # a block's last page may still take a few small events
            pending = flip(state)
            try:
                state, pos = await store.record(state, pending, pos)
            except FleetError as e:
                refused = e
                break
        assert refused is not None, "appends never failed on a full disk"
        assert "disk under its store is full" in str(refused), str(refused)
        written = pos.seq

        first_pid = supervised.pid
        os.unlink(filler)
        deadline = time.monotonic() + GUARD_S
        while True:  # the same events again: stored once, whenever JetStream takes them
            try:
                state, pos = await store.record(state, pending, pos)
                break
            except FleetError:
                assert time.monotonic() < deadline, "appends never worked again"
                await asyncio.sleep(0.1)
        assert supervised.pid != first_pid  # the watcher bounced it; the supervisor restarted it
        state, pos = await store.record(state, flip(state), pos)

        replayed = await store.replay("a1")
        assert replayed.skipped == [] and replayed.state == state
        assert replayed.position == pos and pos.seq == written + 2
        audit = await audit_agent(store, "a1", AuditOptions(keep=False, key=KEY))
        assert audit.violations == [] and audit.count == pos.seq
    finally:
        await nc.close()

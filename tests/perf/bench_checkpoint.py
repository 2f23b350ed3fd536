"""Group `checkpoint`: checkpoint and rollback of a big worktree through a real agent, and audit.

- `checkpoint_p50_ms`: `fleet.cmd.<id> checkpoint` on an agent whose worktree has 1,000 files
  (50 MB) with 20 files changed since the last one: commit through a temporary index, the
  scrollback, the event. Floor: a copy of the index, `git add -A` into it, `write-tree` and
  `commit-tree`, from one shell, on the same worktree, alternating with ours.
- `rollback_p50_ms`: `rollback` of the same agent after 20 changed and 5 new files (it
  checkpoints the work first, replays, restores, records). Floor: `git reset --hard`, `git
  clean -fd` and `git reset` to the parent, from one shell, to the same commit.
- `audit_rate`: events/s audited by services.auditor (what `fleet audit --verify` runs) on a
  100,000-event signed log. Floor: the raw ordered-consumer read of the same events.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import ray
from nats.aio.client import Client

from actors import supervisor
from actors.agent import AgentConfig
from actors.supervisor import FleetConfig
from infra import fleetkey
from infra.eventstore import EventStore
from infra.nats import connect
from schemas import events as e
from schemas import subjects
from schemas.audit import MAC_HEADER, event_mac
from schemas.chain import GENESIS, event_hash
from schemas.states import Activity, Lifecycle
from services import auditor
from tests.perf.bench_eventstore import raw_ordered_count
from tests.perf.common import emit, fresh_nats, git_repo, log, nats_and_ray, p50

FILES, FILE_BYTES, CHANGED, NEW = 1_000, 50 * 1024, 20, 5
CHECKPOINTS, ROLLBACKS = 15, 10
AUDIT_EVENTS, AUDIT_ROUNDS = 100_000, 3
SOCKET = "bench-checkpoint"


def make_repo(root: Path) -> Path:
    def fill(repo: Path) -> None:
        for i in range(FILES):
            folder = repo / f"d{i % 20:02}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{i:04}.bin").write_bytes(os.urandom(FILE_BYTES))
        (repo / ".gitignore").write_text("*.log\n")

    return git_repo(root, fill)


def touch(wt: Path, start: int, changed: int = CHANGED, new: int = 0) -> None:
    for i in range(start, start + changed):
        n = i % FILES
        (wt / f"d{n % 20:02}" / f"f{n:04}.bin").write_bytes(os.urandom(FILE_BYTES))
    for j in range(new):
        (wt / f"new-{start}-{j}.txt").write_text("new\n")


# The agent's repository may belong to its own user (fleetd as root): the floor's plain git
# is told it is safe (command-line scope, as -c).
SAFE_DIR = {
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
}


def shell_ms(wt: Path, script: str) -> float:
    t = time.perf_counter()
    env = {**os.environ, **SAFE_DIR}
    subprocess.run(["sh", "-c", script], cwd=wt, check=True, capture_output=True, env=env)
    return (time.perf_counter() - t) * 1000


COMMIT_FLOOR = (
    'i=$(git rev-parse --git-path index); t=$(mktemp); cp "$i" "$t"; '
    'GIT_INDEX_FILE="$t" git add -A && tree=$(GIT_INDEX_FILE="$t" git write-tree) && '
    'git commit-tree "$tree" -p HEAD -m floor >/dev/null; rm -f "$t"'
)


# The same end state as a rollback (files as saved, branch and index back to the parent).
ROLLBACK_FLOOR = "git reset -q --hard {commit} && git clean -qfd && git reset -q {commit}^"


async def command(nc: Client, agent: str, payload: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subjects.command(agent), msgspec.json.encode(payload), timeout=120)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if not reply.get("ok"):
        raise RuntimeError(f"{payload['type']} failed: {reply}")
    return reply


async def worktree_benchmarks(nc: Client, root: Path, nats_url: str) -> None:
    log(f"checkpoint: a repository of {FILES} files, {FILES * FILE_BYTES >> 20} MB")
    repo = make_repo(root)
    agent = AgentConfig(
        nats_url=nats_url,
        state_dir=str(root / "state"),
        worktree_root=str(root / "worktrees"),
        tmux_socket=SOCKET,
        namespace="bench-checkpoint",
        mac_key=fleetkey.load_or_create(root / "state"),
    )
    handle = supervisor.start(FleetConfig(agent=agent, pool_size=0, max_agents=10))
    ray.get(handle.known.remote())
    spawn = {"repo": str(repo), "name": "big", "template": "shell"}
    msg = await nc.request(subjects.control("spawn"), msgspec.json.encode(spawn), timeout=300)
    wt = Path(msgspec.json.decode(msg.data)["agent"]["worktree"])
    ours, floor, n = [], [], 0
    for _ in range(CHECKPOINTS):
        touch(wt, n)
        floor.append(shell_ms(wt, COMMIT_FLOOR))
        touch(wt, n + CHANGED)
        n += 2 * CHANGED
        t = time.perf_counter()
        await command(nc, "big", {"type": "checkpoint", "label": "bench"})
        ours.append((time.perf_counter() - t) * 1000)
    note = f"target <= 150; {FILES} files / 50 MB, {CHANGED} changed; floor: {COMMIT_FLOOR}"
    emit("checkpoint_p50_ms", p50(ours), "ms", p50(floor), note)
    first = (await command(nc, "big", {"type": "checkpoint", "label": "target"}))["commit"]
    target = (await command(nc, "big", {"type": "show"}))["agent"]["checkpoints"]  # its number
    ours, floor = [], []
    for _ in range(ROLLBACKS):
        touch(wt, n, new=NEW)
        floor.append(shell_ms(wt, ROLLBACK_FLOOR.format(commit=first)))
        touch(wt, n + CHANGED, new=NEW)
        n += 2 * CHANGED
        t = time.perf_counter()
        await command(nc, "big", {"type": "rollback", "checkpoint": target})
        ours.append((time.perf_counter() - t) * 1000)
    note = f"target <= 500; {CHANGED} changed + {NEW} new files; floor: {ROLLBACK_FLOOR}"
    emit("rollback_p50_ms", p50(ours), "ms", p50(floor), note)
    ray.kill(handle, no_restart=True)


async def fill_signed(nc: Client, agent_id: str, n: int, key: bytes) -> None:
    """An honest signed log of `n` events, written pipelined with the headers the actor uses."""
    js, enc = nc.jetstream(), msgspec.json.Encoder()
    now = datetime.now(UTC)
    meta: dict[str, Any] = {"agent_id": agent_id, "at": now, "actor": "agent"}
    L, A = Lifecycle, Activity
    head: list[e.AgentEvent] = [
        e.AgentCreated(event_id="b0", name=agent_id, template="shell", repo="/r", **meta),
        e.LifecycleChanged(event_id="b1", to=L.SPAWNING, frm=L.NEW, **meta),
        e.LifecycleChanged(event_id="b2", to=L.RUNNING, frm=L.SPAWNING, **meta),
    ]
    base = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    prev, pending = GENESIS, []
    for i in range(n):
        if i < len(head):
            event = head[i]
        else:
            to, frm = (A.WORKING, A.READY) if i % 2 else (A.READY, A.WORKING)
            event = e.ActivityChanged(event_id=f"b{i}", to=to, frm=frm, **meta)
        raw = enc.encode(msgspec.structs.replace(event, prev_hash=prev))
        prev = event_hash(raw)
        headers = {
            "Nats-Msg-Id": event.event_id,
            "Nats-Expected-Last-Subject-Sequence": str(base + i if i else 0),
            MAC_HEADER: event_mac(key, raw),
        }
        pending.append(await js.publish_async(subjects.events(agent_id), raw, headers=headers))
        if len(pending) == 1000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def audit_rate(nc: Client) -> None:
    key = b"bench-key-" * 4
    log(f"audit: writing {AUDIT_EVENTS} signed events")
    await fill_signed(nc, "audited", AUDIT_EVENTS, key)
    store = EventStore(nc)
    options = auditor.AuditOptions(key=key, keep=False)
    ours, raw = [], []
    for _ in range(AUDIT_ROUNDS):
        raw.append(await raw_ordered_count(nc, "audited", AUDIT_EVENTS))
        t = time.perf_counter()
        audit = await auditor.audit_agent(store, "audited", options)
        ours.append(AUDIT_EVENTS / (time.perf_counter() - t))
        assert audit.ok and audit.count == AUDIT_EVENTS, audit.violations[:3]
    note = "target >= 80000; chain + MAC + tables + fold; floor: ordered consumer, no decode"
    emit("audit_rate", p50(ours), "events/s", p50(raw), note)


async def main() -> None:
    async with fresh_nats() as nc:  # its own server: the supervisor would re-find this agent
        await audit_rate(nc)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-checkpoint-") as tmp:
        root = Path(tmp)
        async with nats_and_ray(root, SOCKET) as server:
            nc = await connect(server.url)
            await worktree_benchmarks(nc, root, server.url)
            await nc.close()

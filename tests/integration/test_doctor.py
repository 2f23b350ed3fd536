"""`fleet doctor` and `fleet gc` against a real log, real tmux and real git (no actors).

The log is written the way an agent actor writes it (decide, then record through the event
store), so doctor reads exactly what a fleet would leave behind after a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from infra.config import FleetState, Settings, write_state
from infra.eventstore import EventStore
from infra.nats import connect, ensure_streams
from infra.natsserver import NatsServer
from infra.tmux import Tmux
from infra.worktree import Worktrees
from schemas import commands as c
from schemas import events as e
from schemas.agent import decide, initial
from schemas.chain import Position
from services import cli
from tests.integration.conftest import git


class Writer:
    """One agent's log, written as its actor would: decide, append, evolve."""

    def __init__(self, store: EventStore, agent_id: str) -> None:
        self.store, self.state, self.position = store, initial(agent_id), Position()

    def meta(self) -> dict[str, Any]:
        return {"agent_id": self.state.agent_id, "event_id": uuid.uuid4().hex, "at": _now()}

    async def do(self, cmd: c.AgentCommand) -> None:
        events = decide(self.state, cmd, now=_now(), new_id=lambda: uuid.uuid4().hex)
        await self.fact(*events)

    async def fact(self, *events: e.AgentEvent) -> None:
        self.state, self.position = await self.store.record(self.state, events, self.position)


def _now() -> datetime:
    return datetime.now(UTC)


async def _agent(
    store: EventStore, agent_id: str, repo: Path, *, worktree: Path | None, socket: str
) -> Writer:
    """An agent brought to RUNNING: created, worktree ready, session started."""
    w = Writer(store, agent_id)
    await w.do(c.Create(name=agent_id, repo=str(repo), by="user:test"))
    if worktree is not None:
        await w.fact(e.WorkspaceReady(path=str(worktree), branch=f"fleet/{agent_id}", **w.meta()))
    session = f"fleet-{agent_id}"
    await w.fact(e.SessionStarted(socket=socket, session=session, **w.meta()))
    await w.do(c.MarkRunning())
    return w


async def _stop(w: Writer, socket: str) -> None:
    await w.do(c.Stop())
    await w.fact(e.SessionClosed(socket=socket, session=f"fleet-{w.state.agent_id}", **w.meta()))
    await w.do(c.MarkStopped(reason="stopped"))


@pytest.fixture
def world(
    nats_server: NatsServer,
    state_dir: Path,
    tmux: Tmux,
    git_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """A fleet left behind by a crash:

    a1  STOPPED per the log, but its tmux session still runs       -> orphan session
    a2  removed, its worktree is still there with uncommitted work  -> orphan worktree, branch
    a3  RUNNING with its session                                    -> healthy
    a4  RUNNING per the log, its session is gone                     -> lost
    a5  STOPPED, worktree kept (stop keeps it by default)           -> healthy
    fleet-ghost: a session no agent in the log ever had              -> orphan session
    fleet/ghost: a branch no agent in the log ever had               -> orphan branch
    """
    root = tmp_path / "worktrees"
    monkeypatch.setenv("FLEET_TMUX_SOCKET", tmux.socket_name)
    monkeypatch.setenv("FLEET_WORKTREE_ROOT", str(root))
    settings = Settings.from_env()
    write_state(
        settings.state_file,
        FleetState(
            pid=os.getpid(), state_dir=str(state_dir), nats_url=nats_server.url, started_at=_now()
        ),
    )
    wt = Worktrees(git_repo, root)
    for agent_id in ("a1", "a2", "a3", "a5"):
        wt.add(agent_id, agent_id, "HEAD")
    (root / "a2" / "notes.txt").write_text("unsaved work\n")
    for agent_id in ("a1", "a3"):
        tmux.create_session(f"fleet-{agent_id}", root / agent_id, {})
    tmux.create_session("fleet-ghost", git_repo, {})
    tmux.create_session("mine", git_repo, {})  # not fleet-*: never ours to judge
    git(git_repo, "branch", "fleet/ghost")
    asyncio.run(_write_log(nats_server.url, git_repo, root, tmux.socket_name))
    return {"repo": git_repo, "root": root, "tmux": tmux}


async def _write_log(url: str, repo: Path, root: Path, socket: str) -> None:
    nc = await connect(url, reconnect=False)
    try:
        await ensure_streams(nc.jetstream())
        store = EventStore(nc)
        agents = {}
        for agent_id in ("a1", "a2", "a3", "a4", "a5"):
            path = None if agent_id == "a4" else root / agent_id
            agents[agent_id] = await _agent(store, agent_id, repo, worktree=path, socket=socket)
        for agent_id in ("a1", "a2", "a5"):
            await _stop(agents[agent_id], socket)
        await agents["a2"].do(c.Remove())
        assert agents["a2"].state.removed
    finally:
        await nc.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def findings(capsys: pytest.CaptureFixture[str]) -> set[tuple[str, str, str]]:
    status, out, err = run_cli(capsys, "doctor", "--json")
    assert status == 0, err
    return {(o["kind"], o["agent"], o["target"]) for o in json.loads(out)["orphans"]}


def test_doctor_lists_every_kind_of_orphan_and_nothing_alive(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = world["root"]
    assert findings(capsys) == {
        ("session", "a1", "fleet-a1"),
        ("session", "ghost", "fleet-ghost"),
        ("worktree", "a2", str(root / "a2")),
        ("branch", "a2", "fleet/a2"),
        ("branch", "ghost", "fleet/ghost"),
        ("lost", "a4", "fleet-a4"),
    }


def test_doctor_says_why_in_a_table(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "doctor")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "AGENT", "TARGET", "WHY"]
    by_target = {line.split()[2]: line for line in lines[1:] if line.strip()}
    assert "agent a1 is STOPPED" in by_target["fleet-a1"]
    assert "no agent 'ghost' in the log" in by_target["fleet-ghost"]
    assert "agent a2 was removed" in by_target[str(world["root"] / "a2")]
    assert "its tmux session is gone" in by_target["fleet-a4"]
    assert "`fleet gc` removes them" in out


def test_gc_dry_run_changes_nothing(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = findings(capsys)
    status, out, err = run_cli(capsys, "gc", "--dry-run", "--json")
    assert status == 0, err
    actions = {(a["kind"], a["target"]): a["action"] for a in json.loads(out)["actions"]}
    assert actions[("session", "fleet-a1")] == "would remove"
    assert actions[("worktree", str(world["root"] / "a2"))] == "would remove"
    assert actions[("branch", "fleet/a2")] == "kept"
    assert actions[("lost", "fleet-a4")] == "kept"
    assert findings(capsys) == before
    assert world["tmux"].has_session("fleet-a1")


def test_gc_removes_orphans_and_saves_work_to_a_ref(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tmux, repo, root = world["tmux"], world["repo"], world["root"]
    status, out, err = run_cli(capsys, "gc", "--json")
    assert status == 0, err
    done = {(a["kind"], a["target"]): a for a in json.loads(out)["actions"]}
    saved = done[("worktree", str(root / "a2"))]["detail"].removeprefix("work saved to ")
    assert saved.startswith("refs/fleet/saved/a2/")
    assert git(repo, "show", f"{saved}:notes.txt") == "unsaved work"
    assert not (root / "a2").exists()
    assert sorted(tmux.list_sessions()) == ["fleet-a3", "mine"]  # a1 and ghost killed
    assert (root / "a1").is_dir() and (root / "a5").is_dir()  # stopped agents keep theirs
    assert "fleet/a2" in git(repo, "branch", "--list", "fleet/*")  # kept without --branches
    assert findings(capsys) == {
        ("branch", "a2", "fleet/a2"),
        ("branch", "ghost", "fleet/ghost"),
        ("lost", "a4", "fleet-a4"),
    }


def test_gc_branches_deletes_orphan_branches_keeping_unmerged_commits(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = world["repo"]
    git(repo, "checkout", "-q", "fleet/ghost")
    (repo / "ghost.txt").write_text("ghost work\n")
    git(repo, "add", "ghost.txt")
    git(repo, "commit", "-q", "-m", "ghost work")
    git(repo, "checkout", "-q", "main")
    status, out, err = run_cli(capsys, "gc", "--branches")
    assert status == 0, err
    assert "removed" in out and "work saved to refs/fleet/saved/ghost/" in out
    branches = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/fleet/")
    assert branches.split() == ["fleet/a1", "fleet/a3", "fleet/a5"]
    saved = git(repo, "for-each-ref", "--format=%(refname)", "refs/fleet/saved/ghost/")
    assert git(repo, "show", f"{saved}:ghost.txt") == "ghost work"
    assert findings(capsys) == {("lost", "a4", "fleet-a4")}


def test_doctor_without_fleetd_is_one_sentence(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "doctor")
    assert status == 2 and out == ""
    assert err.startswith("fleet: fleetd is not up") and "fleet up" in err
    assert len(err.strip().splitlines()) == 1

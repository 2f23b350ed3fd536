"""An agent made before each agent had a repository of its own works in a linked worktree of
the user's repository, and its panes could write the user's `.git`. When its actor starts
again (an upgrade of fleetd restarts every actor) the worktree becomes a repository of its
own, on the same branch with the same staged changes, and its panes are made again without
that access. Tried from inside the agent's real pane, before and after.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until
from tests.security.pane import in_pane
from tests.security.test_git import git

GUARD_S = 120.0


def make_it_old(repo: Path, wt: Path, root: Path, agent_id: str) -> None:
    """Turn the agent's repository into what `git worktree add` made before: a `.git` file
    naming the user's `worktrees/<name>`, the index there, and no record of fleetd's."""
    spare = root.parent / f"{agent_id}-linked"
    git(repo, "worktree", "add", "-q", "--no-checkout", str(spare), f"fleet/{agent_id}")
    admin = Path(git(spare, "rev-parse", "--absolute-git-dir"))
    subprocess.run(["rm", "-rf", str(wt / ".git")], check=True)
    os.replace(spare / ".git", wt / ".git")
    (admin / "gitdir").write_text(f"{wt / '.git'}\n")
    spare.rmdir()
    git(wt, "read-tree", "HEAD")
    git(wt, "add", "staged.txt")  # staged, not committed: must stay so
    (root / ".fleet" / agent_id).unlink()


async def actor_pid(nc: Client, agent_id: str) -> int:
    shown = await command(nc, agent_id, "show")
    pid: int = shown["agent"]["actor"]["pid"]
    return pid


async def restart_actor(nc: Client, agent_id: str, lifecycle: str) -> None:
    """Kill the agent's actor, as an upgrade does, and wait until its next one answers."""
    pid = await actor_pid(nc, agent_id)
    os.kill(pid, signal.SIGKILL)

    async def back() -> dict[str, Any] | None:
        try:
            shown = await command(nc, agent_id, "show", timeout=5)
        except Exception:
            return None
        agent = shown.get("agent", {})
        ok = agent.get("actor", {}).get("pid") not in (None, 0, pid)
        return agent if ok and agent.get("lifecycle") == lifecycle else None

    await until(back, f"{agent_id}'s actor to come back, {lifecycle}", GUARD_S)


async def test_an_old_agents_linked_worktree_is_migrated_when_its_actor_starts(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    reply = await spawn(nc, str(repo), "lg1")
    assert reply["ok"], reply
    wt = Path(reply["agent"]["worktree"])
    (wt / "staged.txt").write_text("staged work\n")
    make_it_old(repo, wt, fleet.worktree_root, "lg1")
    # As it is when fleetd runs as a normal user (the panes are that user): the user's .git
    # is theirs to write. As root, a pane's own uid needs the mode bits to say so.
    subprocess.run(["chmod", "-R", "a+rwX", str(repo / ".git")], check=True)
    remade = await command(nc, "lg1", "recreate_session", timeout=GUARD_S)  # panes as then
    assert remade["ok"], remade
    probe = f"touch {repo}/.git/probe && echo WROTE; git status --porcelain; echo done"
    before = await in_pane(nc, "lg1", wt, probe)
    assert "WROTE" in before.output, before.output  # the old way: the user's .git is writable
    (repo / ".git" / "probe").unlink()

    await restart_actor(nc, "lg1", "RUNNING")

    async def migrated() -> bool:
        return (wt / ".git").is_dir()

    await until(migrated, "lg1's worktree to become a repository of its own", GUARD_S)
    after = await in_pane(nc, "lg1", wt, probe.replace("status", "status -b"))
    assert "WROTE" not in after.output, after.output
    assert not (repo / ".git" / "probe").exists()
    assert "A  staged.txt" in after.output, after.output  # what it staged, still staged
    assert "fleet/lg1" in after.output, after.output
    assert not (repo / ".git" / "worktrees").exists() or not os.listdir(repo / ".git" / "worktrees")
    assert git(wt, "rev-parse", "HEAD") == git(repo, "rev-parse", "fleet/lg1")
    taken = await command(nc, "lg1", "checkpoint", label="after the move", timeout=GUARD_S)
    assert taken["ok"], taken
    assert git(repo, "show", f"{taken['commit']}:staged.txt") == "staged work"


async def test_a_paused_old_agent_loses_the_users_git_too(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    reply = await spawn(nc, str(repo), "lg2")
    assert reply["ok"], reply
    wt = Path(reply["agent"]["worktree"])
    (wt / "staged.txt").write_text("staged work\n")
    make_it_old(repo, wt, fleet.worktree_root, "lg2")
    subprocess.run(["chmod", "-R", "a+rwX", str(repo / ".git")], check=True)
    remade = await command(nc, "lg2", "recreate_session", timeout=GUARD_S)  # panes as then
    assert remade["ok"], remade
    planted = repo / ".git" / "planted"
    # A process of the old panes that writes the user's .git whenever it runs.
    loop = f"(trap '' HUP TERM; while :; do touch {planted}; sleep 0.2; done) >/dev/null 2>&1 &"
    loop += " echo started"
    assert "started" in (await in_pane(nc, "lg2", wt, loop)).output

    async def written() -> bool:
        return planted.exists()

    await until(written, "the old pane's loop to write the user's .git", GUARD_S)
    assert (await command(nc, "lg2", "pause", timeout=GUARD_S))["ok"]
    planted.unlink()  # stopped now: it would write again as soon as it runs

    await restart_actor(nc, "lg2", "PAUSED")

    assert (wt / ".git").is_dir()  # migrated
    assert not planted.exists()  # its new panes are stopped too: it is still PAUSED
    assert (await command(nc, "lg2", "resume", timeout=GUARD_S))["ok"]
    probe = f"sleep 2; touch {repo}/.git/probe && echo WROTE; git status -b --porcelain; echo done"
    after = await in_pane(nc, "lg2", wt, probe)
    assert "WROTE" not in after.output and not (repo / ".git" / "probe").exists(), after.output
    assert not planted.exists()  # the old panes, and their loop, are gone
    assert "A  staged.txt" in after.output and "fleet/lg2" in after.output, after.output
    await command(nc, "lg2", "kill")

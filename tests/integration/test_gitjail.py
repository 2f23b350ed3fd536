"""infra/gitjail.py against real git, bubblewrap and Landlock: a checkpoint's and a rollback's
git on an agent's files reach only what the agent could. Beside each jailed case, the same
call unjailed shows what the jail is for (it reaches what the agent cannot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.agent import confine
from infra import sandbox, sandbox_argv, uids
from infra.gitjail import Jail
from infra.worktree import Worktrees
from schemas.errors import GitFailed

UID = 589800  # in the sandbox range, far from what the suite's agents lease first
pytestmark = pytest.mark.skipif(
    not sandbox_argv.namespaces_work() or sandbox.landlock_abi() <= 0,
    reason="needs bubblewrap namespaces and Landlock",
)


def git(where: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "safe.directory=*", *args], cwd=where, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return done.stdout.strip()


def make_jail(state: Path, agent: str) -> Jail:
    system = [p for p in confine.SYSTEM_READ if os.path.lexists(p)]
    (state / "sandbox").mkdir(parents=True, exist_ok=True, mode=0o700)
    return Jail(
        work=state / "checkpoints" / agent / "git",
        uid=UID if os.geteuid() == 0 else None,
        namespaces=True,
        landlock=True,
        system=(*system, sys.prefix, sys.base_prefix, confine.FLEETD_ROOT),
        spill=str(state / "sandbox"),
    )


@pytest.fixture
def made(repo: Path, tmp_path: Path) -> tuple[Worktrees, Path, Jail]:
    state = tmp_path / "state"
    jail = make_jail(state, "j1")
    trees = Worktrees(repo, tmp_path / "worktrees", jail)
    wt = trees.create("j1", "j1", "HEAD").path
    if jail.uid is not None:
        uids.hand_over(jail.uid, [wt])
    return trees, wt, jail


def test_a_checkpoint_and_a_rollback_in_the_jail(
    made: tuple[Worktrees, Path, Jail], repo: Path
) -> None:
    trees, wt, jail = made
    (wt / "README.md").write_text("changed\n")
    (wt / "new.txt").write_text("new\n")
    index = jail.work / "index"
    sha = trees.save_to_ref(wt, "refs/fleet/checkpoints/j1/1", index)
    assert git(repo, "show", f"{sha}:new.txt") == "new"  # its objects are the user's now
    assert set(os.listdir(jail.objects)) == {"info", "pack"}  # taken in, then cleared
    assert trees.is_dirty(wt)
    (wt / "README.md").write_text("later\n")
    (wt / "junk.txt").write_text("junk\n")
    trees.restore(wt, sha, index)
    assert (wt / "README.md").read_text() == "changed\n" and not (wt / "junk.txt").exists()
    if jail.uid is not None:  # written by the agent's own user, not handed over afterwards
        assert os.stat(wt / "README.md").st_uid == jail.uid
    status = [line.strip() for line in git(wt, "status", "--porcelain").splitlines()]
    assert status == ["M README.md", "?? new.txt"]  # its branch and index as they were


def test_the_jail_reaches_only_what_the_agent_could(
    made: tuple[Worktrees, Path, Jail], tmp_path: Path
) -> None:
    _, wt, jail = made
    secret = tmp_path / "state" / "admin.token"
    secret.write_text("SECRET\n")
    read = ("!cat", str(secret))
    with pytest.raises(GitFailed):
        jail.run("read the secret", wt, [(read, {})], read=[str(wt)], write=[])
    unjailed = Jail(jail.work, None, False, False, (), "")
    assert not unjailed.active  # nothing to confine with: the call is not jailed at all
    write = ("!sh", "-c", f"echo x > {tmp_path}/outside")
    with pytest.raises(GitFailed):
        jail.run("write outside", wt, [(write, {})], read=[], write=[str(wt)])
    assert not (tmp_path / "outside").exists()


def test_a_git_file_naming_another_repository_is_not_followed(
    made: tuple[Worktrees, Path, Jail], repo: Path, tmp_path: Path
) -> None:
    trees, wt, jail = made
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    (other / "f").write_text("f\n")
    git(other, "add", "f")
    git(other, "-c", "user.name=T", "-c", "user.email=t@x", "commit", "-qm", "hidden")
    hidden = git(other, "rev-parse", "HEAD")
    (wt / "sub").mkdir()
    (wt / "sub" / ".git").write_text(f"gitdir: {other / '.git'}\n")
    (wt / "sub" / "x").write_text("x\n")

    sha = trees.save_to_ref(wt, "refs/fleet/checkpoints/j1/1", jail.work / "index")
    assert hidden not in git(repo, "ls-tree", "-r", sha)

    # fleetd's own user, unjailed, follows it: what the jail is for
    plain = Worktrees(repo, wt.parent)
    leaked = plain.save_to_ref(wt, "refs/fleet/saved/j1/plain", tmp_path / "plain-index")
    assert hidden in git(repo, "ls-tree", "-r", leaked)

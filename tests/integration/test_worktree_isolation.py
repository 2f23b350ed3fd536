"""What an agent writes in its own repository never runs in the control plane's git, and never
takes away what a checkpoint needs (real git, real files; the in-pane versions of these are in
tests/security/test_git.py)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from infra import agentrepo, gitsafe
from infra.worktree import Worktrees
from schemas.errors import GitFailed
from tests.integration.conftest import git

HOOKS = (
    "pre-commit", "post-commit", "post-checkout", "reference-transaction", "post-index-change",
    "pre-auto-gc", "post-rewrite", "pre-push", "fsmonitor-watchman",
)  # fmt: skip


@pytest.fixture
def trees(git_repo: Path, tmp_path: Path) -> Worktrees:
    return Worktrees(git_repo, tmp_path / "worktrees")


def _script(path: Path, marker: Path, name: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {name} >> {marker}\ncat >/dev/null 2>&1\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def plant(git_dir: Path, worktree: Path | None, marker: Path) -> None:
    """Everything git could run from a repository an agent can write: hooks in the repo's own
    hooks folder and in one its config names, fsmonitor, filters (named by .gitattributes),
    an external diff, a pager, an ssh command, a split index and the untracked cache."""
    for hook in HOOKS:
        _script(git_dir / "hooks" / hook, marker, f"hook {hook}")
        _script(git_dir / "evil-hooks" / hook, marker, f"hooksPath {hook}")
    tool = _script(git_dir / "evil-tool", marker, "tool")
    with (git_dir / "config").open("a") as config:
        config.write(
            f"[core]\n\thooksPath = {git_dir / 'evil-hooks'}\n\tfsmonitor = {tool}\n"
            f"\tuntrackedCache = true\n\tsplitIndex = true\n\tsshCommand = {tool}\n"
            f"\tpager = {tool}\n\taskPass = {tool}\n"
            f'[filter "evil"]\n\tclean = {tool}\n\tsmudge = {tool}\n\tprocess = {tool}\n'
            f"\trequired = true\n"
            f"[diff]\n\texternal = {tool}\n"
        )
    if worktree is not None:
        (worktree / ".gitattributes").write_text("* filter=evil diff=evil\n")


def test_nothing_planted_runs_in_spawn_checkpoint_rollback_stop_or_remove(
    trees: Worktrees, git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran.txt"
    home = tmp_path / "home"  # a template may grant the user's home: ~/.gitconfig is the agent's
    home.mkdir()
    plant(home / ".evil", None, marker)
    (home / ".gitconfig").write_text((home / ".evil" / "config").read_text())
    monkeypatch.setenv("HOME", str(home))
    plant(git_repo / ".git", None, marker)  # what an older agent may have left behind
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))  # fleetd's own env is no redirect
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.fsmonitor={home / '.evil/evil-tool'}'")

    path = trees.add("a1", "a1", "main")
    plant(path / ".git", path, marker)
    (path / "work.txt").write_text("work\n")
    index = tmp_path / "kept-index"
    assert trees.is_dirty(path) and trees.unmerged_commits(path, "main") == 0
    first = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/1", index)
    (path / "work.txt").write_text("more\n")
    trees.save_to_ref(path, "refs/fleet/checkpoints/a1/2", index)
    trees.restore(path, first, index)
    assert (path / "work.txt").read_text() == "work\n"
    trees.bring_back("a1")
    assert trees.remove("a1", force=True) is not None
    assert trees.add("a2", "a2", "main").is_dir()
    assert not marker.exists(), marker.read_text()
    # (read with the safe git: the user's config holds what the test planted)
    shown = gitsafe.run("read the checkpoint", git_repo, ("show", f"{first}:work.txt"))
    assert shown == "work"  # no clean filter ran on it


def test_an_agent_that_destroys_its_repository_loses_no_checkpoint(
    trees: Worktrees, git_repo: Path, tmp_path: Path
) -> None:
    path = trees.add("a1", "a1", "main")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "commit", "-q", "-m", "a")
    committed = git(path, "rev-parse", "HEAD")
    (path / "b.txt").write_text("staged\n")
    git(path, "add", "b.txt")  # a blob only the agent's repository has
    index = tmp_path / "kept-index"
    first = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/1", index)
    user_refs = git(git_repo, "for-each-ref")

    # The agent deletes everything it can: refs, objects, its index; then prunes.
    shutil.rmtree(path / ".git" / "objects")
    (path / ".git" / "objects").mkdir()
    shutil.rmtree(path / ".git" / "refs")
    (path / ".git" / "refs").mkdir()
    (path / ".git" / "index").unlink()
    (path / ".git" / "objects" / "info").mkdir()
    (path / ".git" / "objects" / "info" / "alternates").write_text(str(tmp_path / "nowhere"))
    (path / "b.txt").write_text("changed\n")

    assert git(git_repo, "for-each-ref") == user_refs
    assert trees.is_dirty(path)  # HEAD read from the user's record of the agent's branch
    second = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/2", index)
    assert git(git_repo, "show", f"{second}:b.txt") == "changed"
    trees.restore(path, first, index)
    assert (path / "b.txt").read_text() == "staged\n" and (path / "a.txt").read_text() == "a\n"
    assert git(path, "rev-parse", "HEAD") == committed  # the agent's branch is back, and usable
    assert git(path, "status", "--porcelain") == "?? b.txt"  # staged then, untracked again
    assert git(path, "cat-file", "-p", "HEAD:a.txt") == "a"


def test_a_checkpoint_index_naming_a_lost_object_is_rebuilt(
    trees: Worktrees, git_repo: Path, tmp_path: Path
) -> None:
    path = trees.add("a1", "a1", "main")
    index = tmp_path / "kept-index"
    trees.save_to_ref(path, "refs/fleet/checkpoints/a1/1", index)
    # The kept index now names a blob nobody has (as after a prune of the old shared repo).
    env = {"GIT_INDEX_FILE": str(index)}
    gone = "0123456789abcdef0123456789abcdef01234567"
    gitsafe.run(
        "plant", git_repo, ("update-index", "--add", "--cacheinfo", f"100644,{gone},x"), env
    )
    (path / "x").write_text("x\n")
    os.utime(path / "x", (0, 0))
    sha = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/2", index)
    assert git(git_repo, "show", f"{sha}:x") == "x"
    again = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/3", index)  # and the next one
    assert git(git_repo, "rev-parse", f"{again}^{{tree}}") == git(
        git_repo, "rev-parse", f"{sha}^{{tree}}"
    )


def test_links_planted_in_the_agent_repository_are_replaced_not_followed(
    trees: Worktrees, git_repo: Path, tmp_path: Path
) -> None:
    path = trees.add("a1", "a1", "main")
    secret = tmp_path / "secret"
    secret.write_text("do not touch\n")
    index = tmp_path / "kept-index"
    first = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/1", index)
    for name in ("index", "refs/heads/fleet/a1"):
        target = path / ".git" / name
        target.unlink()
        target.symlink_to(secret)
    assert agentrepo.read(path, "index") is None
    trees.restore(path, first, index)
    assert secret.read_text() == "do not touch\n"
    assert not (path / ".git" / "index").is_symlink()
    assert git(path, "rev-parse", "HEAD") == git(git_repo, "rev-parse", "main")


def test_a_fifo_that_blocks_git_is_a_sentence_and_the_next_save_works(
    trees: Worktrees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = trees.add("a1", "a1", "main")
    (path / ".gitignore").unlink()
    os.mkfifo(path / ".gitignore")  # git opens it to read patterns, and waits for a writer
    assert stat.S_ISFIFO((path / ".gitignore").lstat().st_mode)
    monkeypatch.setattr(gitsafe, "TIMEOUT_S", 3.0)
    kept = tmp_path / "kept-index"
    with pytest.raises(GitFailed, match=f"stage the worktree in {path}: .*longer than 3 s"):
        trees.save_to_ref(path, "refs/fleet/checkpoints/a1/1", kept)
    (path / ".gitignore").unlink()
    sha = trees.save_to_ref(path, "refs/fleet/checkpoints/a1/1", kept)  # no stale lock in the way
    assert git(trees.main, "rev-parse", "refs/fleet/checkpoints/a1/1") == sha


def test_the_safe_environment_drops_fleetds_own_git_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Ada")
    env = gitsafe.environment({"GIT_INDEX_FILE": "/x"})
    assert "GIT_DIR" not in env and env["GIT_AUTHOR_NAME"] == "Ada"
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_INDEX_FILE"] == "/x"
    argv = gitsafe.argv(["status"])
    assert argv[-1] == "status" and "core.hooksPath=/dev/null" in argv
    assert "core.fsmonitor=false" in argv and "core.untrackedCache=false" in argv

"""Agents' repositories in real git: add, dirt, saved state, guarded removal, orphan listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.agentfiles import paths_for_pane
from infra.worktree import Worktrees, common_dir
from schemas.errors import GitFailed, InvalidName, NotARepository, UnknownRef, WorktreeHasWork
from tests.integration.conftest import git


@pytest.fixture
def trees(git_repo: Path, tmp_path: Path) -> Worktrees:
    return Worktrees(git_repo, tmp_path / "worktrees")


def test_add_makes_a_fleet_branch_from_the_base(trees: Worktrees, git_repo: Path) -> None:
    path = trees.add("a1", "a1", "main")
    assert path == trees.root / "a1" and (path / "README.md").read_text() == "hello\n"
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD") == "fleet/a1"
    assert git(path, "rev-parse", "HEAD") == git(git_repo, "rev-parse", "main")
    assert trees.list_fleet_branches() == ["fleet/a1"]
    [info] = trees.list_fleet_worktrees()
    assert (info.path, info.branch, info.agent_id) == (path, "fleet/a1", "a1")
    assert not trees.is_dirty(path) and trees.unmerged_commits(path, "main") == 0


def test_create_answers_the_new_head_and_reuses_a_branch(trees: Worktrees, git_repo: Path) -> None:
    made = trees.create("a1", "a1", "main")
    assert (made.path, made.branch, made.agent_id) == (trees.root / "a1", "fleet/a1", "a1")
    assert made.head == git(made.path, "rev-parse", "HEAD") == git(git_repo, "rev-parse", "main")
    git(made.path, "commit", "-q", "--allow-empty", "-m", "work")
    trees.remove("a1", base_ref="fleet/a1")
    again = trees.create("a1", "a1", "nope")  # an existing branch: its base is not asked for
    assert again.head == git(again.path, "rev-parse", "HEAD") != made.head


def test_repository_is_found_from_its_top_or_its_git_dir(git_repo: Path, tmp_path: Path) -> None:
    assert Worktrees(git_repo, tmp_path).main == git_repo
    assert Worktrees(git_repo / ".git", tmp_path).main == git_repo
    with pytest.raises(NotARepository, match="not a git repository"):
        Worktrees(git_repo / "nowhere", tmp_path)
    with pytest.raises(NotARepository, match=r"cannot be read \(File name too long\)"):
        Worktrees("/" + "x" * 300, tmp_path)  # an OSError of its own, not a bug


def test_common_dir_is_what_git_says(trees: Worktrees, git_repo: Path) -> None:
    path = trees.add("a1", "a1", "main")
    said = git(path, "rev-parse", "--path-format=absolute", "--git-common-dir")
    assert common_dir(path) == said == str(path / ".git")  # a repository of its own
    assert common_dir(git_repo) == str(git_repo / ".git")
    assert common_dir(trees.root) == ""


def test_an_agent_repository_borrows_the_users_objects_and_nothing_else(
    trees: Worktrees, git_repo: Path
) -> None:
    path = trees.add("a1", "a1", "main")
    alternates = (path / ".git" / "objects" / "info" / "alternates").read_text()
    assert alternates == f"{git_repo / '.git' / 'objects'}\n"
    assert git(path, "count-objects") == "0 objects, 0 kilobytes"  # nothing copied
    assert git(path, "config", "user.name") == "Fleet Test"  # the user's identity for commits
    assert not (path / ".git" / "hooks").exists()  # no sample hooks either
    assert paths_for_pane(git_repo, path) == ([str(git_repo / ".git" / "objects")], [str(path)])


def test_add_refuses_with_a_sentence(trees: Worktrees, git_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(GitFailed, match="not a git repository"):
        Worktrees(tmp_path, tmp_path / "wt")
    with pytest.raises(UnknownRef, match="base ref 'nope' does not exist"):
        trees.add("a1", "a1", "nope")
    trees.add("a1", "a1", "main")
    with pytest.raises(GitFailed, match="already exists"):
        trees.add("a1", "other", "main")
    with pytest.raises(GitFailed, match="branch fleet/a1 is checked out"):
        trees.add("a2", "a1", "main")
    assert trees.list_fleet_branches() == ["fleet/a1"]


def test_is_dirty_sees_tracked_and_untracked_but_not_ignored(trees: Worktrees) -> None:
    path = trees.add("a1", "a1", "main")
    (path / "build.log").write_text("ignored\n")
    assert not trees.is_dirty(path)
    (path / "new.txt").write_text("untracked\n")
    assert trees.is_dirty(path)
    (path / "new.txt").unlink()
    (path / "README.md").write_text("changed\n")
    assert trees.is_dirty(path)


def test_save_to_ref_keeps_branch_index_and_files(trees: Worktrees) -> None:
    path = trees.add("a1", "a1", "main")
    (path / "README.md").write_text("changed\n")
    (path / "new.txt").write_text("untracked\n")
    (path / "build.log").write_text("ignored\n")
    head = git(path, "rev-parse", "HEAD")
    index_file = Path(git(path, "rev-parse", "--path-format=absolute", "--git-path", "index"))
    index_before = index_file.read_bytes()
    status_before = git(path, "status", "--porcelain")

    sha = trees.save_to_ref(path, "refs/fleet/saved/a1/t1")

    assert git(trees.main, "rev-parse", "refs/fleet/saved/a1/t1") == sha  # the user's repo
    assert git(path, "rev-parse", f"{sha}^") == head
    assert git(path, "show", f"{sha}:new.txt") == "untracked"
    assert git(path, "show", f"{sha}:README.md") == "changed"
    assert "build.log" not in git(path, "ls-tree", "--name-only", sha)
    assert git(path, "rev-parse", "HEAD") == head  # the branch did not move
    assert index_file.read_bytes() == index_before  # nor did the real index
    assert git(path, "status", "--porcelain") == status_before


def test_remove_refuses_dirty_and_saves_before_force(trees: Worktrees, git_repo: Path) -> None:
    path = trees.add("a1", "a1", "main")
    (path / "new.txt").write_text("work in progress\n")
    with pytest.raises(WorktreeHasWork, match="uncommitted changes; use --force"):
        trees.remove("a1")
    assert path.exists()
    saved = trees.remove("a1", force=True)
    assert saved is not None and saved.startswith("refs/fleet/saved/a1/")
    assert not path.exists() and trees.list_fleet_worktrees() == []
    assert git(git_repo, "show", f"{saved}:new.txt") == "work in progress"
    assert trees.list_fleet_branches() == ["fleet/a1"]  # kept


def test_remove_refuses_unmerged_and_reuses_the_branch(trees: Worktrees, git_repo: Path) -> None:
    path = trees.add("a1", "a1", "main")
    (path / "feature.txt").write_text("done\n")
    git(path, "add", "feature.txt")
    git(path, "commit", "-q", "-m", "feature")
    assert trees.unmerged_commits(path, "main") == 1
    with pytest.raises(WorktreeHasWork, match="1 unmerged commit"):
        trees.remove("a1")
    assert trees.remove("a1", base_ref="fleet/a1") is None  # nothing unmerged against itself
    again = trees.add("a1", "a1", "main")  # the existing branch, with its commit
    assert (again / "feature.txt").read_text() == "done\n"
    assert trees.remove("a1", force=True, delete_branch=True) is not None
    assert trees.list_fleet_branches() == []


def test_remove_of_a_vanished_worktree_forgets_it(trees: Worktrees, git_repo: Path) -> None:
    import shutil

    path = trees.add("a1", "a1", "main")
    shutil.rmtree(path)
    assert trees.remove("a1") is None
    assert trees.list_fleet_worktrees() == []


def test_an_older_linked_worktree_is_still_listed_and_removed(
    trees: Worktrees, git_repo: Path
) -> None:
    old = trees.root / "old"
    git(git_repo, "worktree", "add", "-q", "-b", "fleet/old", str(old), "main")
    [info] = trees.list_fleet_worktrees()
    assert (info.path, info.branch, info.agent_id) == (old, "fleet/old", "old")
    (old / "wip.txt").write_text("wip\n")
    assert trees.is_dirty(old)
    with pytest.raises(WorktreeHasWork):
        trees.remove("old")
    saved = trees.remove("old", force=True)
    assert saved is not None and git(git_repo, "show", f"{saved}:wip.txt") == "wip"
    assert not old.exists() and trees.list_fleet_worktrees() == []


def test_work_comes_back_to_the_users_branch(trees: Worktrees, git_repo: Path) -> None:
    path = trees.add("a1", "a1", "main")
    (path / "done.txt").write_text("done\n")
    git(path, "add", "done.txt")
    git(path, "commit", "-q", "-m", "done")
    assert git(git_repo, "rev-parse", "fleet/a1") == git(git_repo, "rev-parse", "main")
    head = trees.bring_back("a1")
    assert head == git(path, "rev-parse", "HEAD") == git(git_repo, "rev-parse", "fleet/a1")
    assert git(git_repo, "show", "fleet/a1:done.txt") == "done"  # its objects came along
    git(git_repo, "checkout", "-q", "fleet/a1")  # checked out by the user: left alone
    git(path, "commit", "-q", "--allow-empty", "-m", "more")
    assert trees.bring_back("a1") is None
    assert git(git_repo, "rev-parse", "fleet/a1") == head


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "-rf", "a b", "x..y", "é"])
def test_hostile_names_are_refused(trees: Worktrees, name: str) -> None:
    with pytest.raises(InvalidName):
        trees.add(name, "ok", "main")
    with pytest.raises(InvalidName):
        trees.add("ok", name, "main")
    assert not trees.root.exists() or not any(trees.root.iterdir())


@pytest.mark.parametrize("ref", ["--exec=x", "main~1", "a b", "HEAD^{tree}", "x:y"])
def test_hostile_base_refs_are_refused(trees: Worktrees, ref: str) -> None:
    with pytest.raises(InvalidName):
        trees.add("a1", "a1", ref)


def test_save_to_ref_refuses_bad_refs(trees: Worktrees) -> None:
    path = trees.add("a1", "a1", "main")
    with pytest.raises(InvalidName):
        trees.save_to_ref(path, "HEAD")
    with pytest.raises(GitFailed):
        trees.save_to_ref(path, "refs/fleet/bad..ref")


def test_many_adds_at_once_in_one_repo_all_succeed(trees: Worktrees) -> None:
    """Spawns run in parallel; unserialised `git worktree add`s in one repo raced in
    .git/worktrees ("failed to read .../commondir") during a 200-agent spawn."""
    from concurrent.futures import ThreadPoolExecutor

    names = [f"p{i:02d}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda n: trees.add(n, n, "HEAD"), names))
    assert all((p / ".git").exists() for p in paths)
    assert sorted(str(w.branch) for w in trees.list_fleet_worktrees()) == [
        f"fleet/{n}" for n in names
    ]


def test_save_to_ref_names_the_user_or_else_fleetd(
    trees: Worktrees, git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = trees.add("a1", "a1", "main")
    sha = trees.save_to_ref(path, "refs/fleet/saved/a1/t1")
    assert git(path, "log", "-1", "--format=%an <%ae>", sha) == "Fleet Test <test@fleet.invalid>"
    git(git_repo, "config", "--unset", "user.name")
    git(git_repo, "config", "--unset", "user.email")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.gitconfig either
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    sha = trees.save_to_ref(path, "refs/fleet/saved/a1/t2")
    assert (
        git(path, "log", "-1", "--format=%an <%ae> %cn", sha) == "fleetd <fleetd@localhost> fleetd"
    )

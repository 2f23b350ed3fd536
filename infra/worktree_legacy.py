"""Linked worktrees (`git worktree add`) of the user's repository: how agents worked before each
had a repository of its own (infra/worktree.py). An agent made then keeps its linked worktree
until it is removed; these are the operations on one, all through infra/gitsafe.py. Such an
agent still shares the user's git directory (its commits go there); removing and spawning it
again moves it to a repository of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from infra import gitsafe
from schemas.errors import GitFailed, WorktreeHasWork

SAVED_PREFIX = "refs/fleet/saved/"
BRANCH_PREFIX = "fleet/"


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def common_dir(worktree: str | Path) -> str:
    """The absolute git directory whose objects and refs a worktree's commits go to, "" when
    it is none: its own `.git` for an agent's repository, the user's for a linked worktree.
    Read from `.git` and its `commondir` file (gitrepository-layout(5)) without running git;
    git is asked only for another layout."""
    dot_git = Path(worktree).absolute() / ".git"
    try:
        if dot_git.is_dir():
            found = dot_git
        else:
            found = Path(dot_git.read_text().removeprefix("gitdir:").strip())
            found = found if found.is_absolute() else dot_git.parent / found
        common = found / "commondir"
        if common.is_file():
            shared = Path(common.read_text().strip())
            found = shared if shared.is_absolute() else found / shared
        if _is_git_dir(found):
            return os.path.normpath(found)
    except OSError:
        pass
    try:
        said = gitsafe.run(
            "find the git directory", worktree,
            ("rev-parse", "--path-format=absolute", "--git-common-dir"),
        )  # fmt: skip
    except GitFailed:
        return ""
    return said.strip()


class LegacyWorktrees:
    """Operations on linked worktrees of one repository (`main`, git directory `gitdir`)."""

    def __init__(self, main: Path, root: Path, gitdir: Path) -> None:
        self.main, self.root, self.gitdir = main, root, gitdir

    def _git(self, action: str, where: str | Path, *args: str, **env: str) -> str:
        return gitsafe.run(action, where, args, env)

    def is_dirty(self, path: Path) -> bool:
        return bool(self._git("read the status", path, "status", "--porcelain", "-uall"))

    def unmerged_commits(self, path: Path, base: str) -> int:
        return int(self._git("count commits", path, "rev-list", "--count", f"{base}..HEAD"))

    def save_to_ref(self, path: Path, ref: str, index_file: str | Path | None) -> str:
        real = Path(self._git("find the index", path, "rev-parse", "--git-path", "index"))
        real = real if real.is_absolute() else path / real
        asked = gitsafe.ask_identity(self.main)
        try:
            with tempfile.TemporaryDirectory(prefix="fleet-index-") as tmp:
                index = Path(index_file) if index_file is not None else Path(tmp) / "index"
                if real.exists() and not index.exists():
                    index.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(real, index)
                env = {"GIT_INDEX_FILE": str(index)}
                self._git("stage the worktree", path, "add", "-A", **env)
                tree = self._git("write a tree", path, "write-tree", **env)
        finally:
            who = gitsafe.identity(asked)
        message = f"fleet: saved state of {path.name}"
        sha = self._git("commit the state", path, "commit-tree", tree, "-p", "HEAD", "-m", message,
                        **who)  # fmt: skip
        self._git("store the state", path, "update-ref", ref, sha)
        return sha

    def restore(self, path: Path, sha: str, index_file: str | Path | None) -> None:
        if index_file is not None and Path(index_file).exists():
            env = {"GIT_INDEX_FILE": str(index_file)}
            self._git("restore the saved files", path, "read-tree", "--reset", "-u", sha, **env)
            self._git("remove files made since", path, "clean", "-q", "-f", "-d", **env)
        else:
            self._git("restore the saved files", path, "reset", "-q", "--hard", sha)
            self._git("remove files made since", path, "clean", "-q", "-f", "-d")
        self._git("move the branch back", path, "reset", "-q", "--no-refresh", f"{sha}^")

    def remove(
        self, agent_id: str, path: Path, force: bool, base_ref: str | None, delete_branch: bool
    ) -> str | None:
        where = str(self.main)
        if not path.exists():
            self._git("prune worktrees", where, "worktree", "prune")
            return None
        branch = self._git("read the branch", path, "rev-parse", "--abbrev-ref", "HEAD")
        dirty = self.is_dirty(path)
        base = base_ref or self._git("read HEAD", where, "rev-parse", "HEAD")
        unmerged = self.unmerged_commits(path, base)
        saved = None
        if dirty or unmerged:
            if not force:
                raise WorktreeHasWork(agent_id, str(path), dirty, unmerged)
            saved = f"{SAVED_PREFIX}{agent_id}/{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
            self.save_to_ref(path, saved, None)
        self._git("remove the worktree", where, "worktree", "remove", "--force", str(path))
        self._git("prune worktrees", where, "worktree", "prune")
        if delete_branch and branch.startswith(BRANCH_PREFIX):
            self._git("delete the branch", where, "branch", "-D", branch)
        return saved

    def listed(self) -> list[tuple[Path, str | None, str, str | None]]:
        """(path, branch, head, agent id) of each linked worktree on a `fleet/` branch or
        under the root."""
        out = self._git("list worktrees", self.main, "worktree", "list", "--porcelain")
        found = []
        for block in out.strip().split("\n\n"):
            fields = dict(line.partition(" ")[::2] for line in block.splitlines())
            path = Path(fields.get("worktree", ""))
            branch = fields.get("branch", "").removeprefix("refs/heads/") or None
            under_root = path.parent == self.root
            if under_root or (branch or "").startswith(BRANCH_PREFIX):
                agent = path.name if under_root else None
                found.append((path, branch, fields.get("HEAD", ""), agent))
        return found

    @staticmethod
    def exclude_untracked(worktree: Path, name: str) -> None:
        """`/<name>` in the repository's info/exclude (shared by its worktrees), unless tracked."""
        try:
            gitsafe.run("look for a file", worktree, ("ls-files", "--error-unmatch", name))
            return  # tracked: changing what git shows is the project's business
        except GitFailed:
            pass
        try:
            found = gitsafe.run("find info/exclude", worktree,
                                ("rev-parse", "--git-path", "info/exclude"))  # fmt: skip
        except GitFailed:
            return
        exclude = Path(found)
        exclude = exclude if exclude.is_absolute() else worktree / exclude
        text = exclude.read_text() if exclude.exists() else ""
        if f"/{name}" not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            sep = "" if text.endswith("\n") or not text else "\n"
            exclude.write_text(text + sep + f"/{name}\n")

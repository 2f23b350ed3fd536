"""Agents' repositories: one branch `fleet/<name>` and one repository of its own per agent.

An agent works in `<root>/<agent id>`, a repository of its own (`.git` inside) whose objects
borrow the user's (`objects/info/alternates`), on its branch. It can write its repository but
not the user's: the user's branches, other agents' branches, fleetd's refs (checkpoints under
`refs/fleet/checkpoints/`, saved states under `refs/fleet/saved/`) and every object they need
live in the user's repository, which a pane may only read (its objects). The control plane
copies what it needs out of the agent's repository (infra/agentrepo.py reads its HEAD and
index without running git in it; its objects are borrowed read-only for a call through
`GIT_ALTERNATE_OBJECT_DIRECTORIES`), and every git it runs is infra/gitsafe.py's. So deleting
refs or `git gc --prune=now` in an agent's repository destroys nothing a checkpoint needs.

The user's repository holds `refs/heads/fleet/<name>`, made at the base when the agent is
created and brought up to the agent's HEAD (`bring_back`) when it stops and before its
repository is removed; that is the branch a person reviews and merges.

Work is never lost: removing an agent's repository that has uncommitted changes or unmerged
commits is refused, and with `force` its whole state (tracked and untracked files) is first
committed to a ref under `refs/fleet/saved/` of the user's repository. The same `save_to_ref`
serves checkpoints.

Branch policy for `create`: a new branch `fleet/<name>` is made from `base_ref`. If that
branch already exists and no agent's repository has it (an agent that was stopped and whose
repository was removed), it is reused as is, and `base_ref` is ignored: its commits are the
agent's earlier work. If one has it, `create` refuses. Older agents' linked worktrees (made by
`git worktree add`) are still listed and removed, and `migrate` makes one a repository of its
own (its actor does when it starts).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra import agentrepo, gitsafe, snapshots
from infra.agentfiles import Records, gitfile, is_linked, quoted, read_plain
from infra.agentfiles import checked_token as _token
from infra.gitjail import Jail
from infra.userrepo import BRANCH_PREFIX, UserRepo, repo_lock
from infra.worktree_legacy import LegacyWorktrees, common_dir
from schemas.errors import GitFailed, InvalidName, UnknownRef, WorktreeHasWork

__all__ = ["BRANCH_PREFIX", "SAVED_PREFIX", "WorktreeInfo", "Worktrees", "common_dir"]

SAVED_PREFIX = "refs/fleet/saved/"
_REF = re.compile(r"[^-\s~^:?*\[\\][^\s~^:?*\[\\]*")


@dataclass(frozen=True)
class WorktreeInfo:
    """One agent's repository (or an older linked worktree) that belongs to the fleet."""

    path: Path
    branch: str | None  # short name, e.g. "fleet/a1"; None when detached
    head: str
    agent_id: str | None  # the directory name when it lies under the worktree root


def _ref(what: str, value: str) -> str:
    """A ref or commit name that git can not read as an option or a revision expression."""
    if not _REF.fullmatch(value):
        raise InvalidName(what, value, "a git ref or sha: no leading '-', spaces or ~^:?*[\\")
    return value


class Worktrees:
    """The fleet's agent repositories of one user repository, kept under `root/<agent_id>`."""

    def __init__(self, repo_path: str | Path, root: str | Path, jail: Jail | None = None) -> None:
        self.repo = UserRepo(repo_path, root)
        self.main, self.root, self.common = self.repo.main, self.repo.root, self.repo.common
        self._legacy = LegacyWorktrees(self.main, self.root, self.repo.gitdir)
        self.records = Records(self.root, self.common)  # each agent's branch, fleetd's word
        self.jail = jail  # where git on the agent's files runs (infra/gitjail.py), if set

    def path_for(self, agent_id: str) -> Path:
        return self.root / _token("agent id", agent_id)

    # -- creating ---------------------------------------------------------------------------

    def add(self, agent_id: str, branch: str, base_ref: str) -> Path:
        """Create the agent's repository on branch `fleet/<branch>`; return its path."""
        return self.create(agent_id, branch, base_ref).path

    def check_base(self, branch: str, base_ref: str) -> None:
        """Refuse (UnknownRef) what `create` would: a base ref that names no commit, with no
        branch `fleet/<branch>` to start from either; said before anything is made."""
        if _REF.fullmatch(base_ref) and self._commit_of(base_ref) is not None:
            return
        if self._commit_of(f"refs/heads/{BRANCH_PREFIX}{_token('branch name', branch)}") is None:
            _ref("base ref", base_ref)
            raise UnknownRef(str(self.main), base_ref)

    def create(self, agent_id: str, branch: str, base_ref: str) -> WorktreeInfo:
        """`add`, answering the new repository's entry, its HEAD included."""
        path = self.path_for(agent_id)
        full = BRANCH_PREFIX + _token("branch name", branch)
        where = str(self.main)
        if path.exists() or path.is_symlink():
            raise GitFailed("add a worktree", where, f"{path} already exists")
        head = self._commit_of(base_ref) if _REF.fullmatch(base_ref) else None
        with repo_lock(self.common):  # one branch check-and-make at a time per repository
            if head is None or not self._make_branch(full, head):
                existing = self._commit_of(f"refs/heads/{full}")
                if existing is None:
                    _ref("base ref", base_ref)
                    raise UnknownRef(where, base_ref)
                if self._has_branch(full):
                    raise GitFailed(
                        "add a worktree", where, f"branch {full} is checked out elsewhere"
                    )
                head = existing
            self.records.write(agent_id, full)
        try:
            self._init(path, full, head)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            self.records.forget(agent_id)
            raise
        return WorktreeInfo(path, full, head, agent_id)

    def _make_branch(self, full: str, head: str) -> bool:
        """Make `refs/heads/<full>` at `head` unless it exists; whether it was made."""
        try:  # an empty old value: the ref must not exist yet
            self.repo.git("make the branch", "update-ref", f"refs/heads/{full}", head, "")
        except GitFailed:
            return False
        return True

    def _has_branch(self, full: str) -> bool:
        """An agent's repository, or a worktree of the user's, has `full` checked out."""
        return full in {w.branch for w in self.list_fleet_worktrees()} or self._checked_out(full)

    def _init(self, path: Path, full: str, head: str, checkout: bool = True) -> None:
        """A repository at `path` on `full` at `head`, borrowing the user's objects, with the
        user's name and email; its files checked out (`checkout`), else only its index made
        (the files are the agent's, kept as they are)."""
        self.root.mkdir(parents=True, exist_ok=True)
        asked = gitsafe.ask_identity(self.main)
        try:
            gitsafe.run(
                "make the agent's repository", self.root,
                ("init", "-q", "--template=", f"--initial-branch={full}", str(path)),
            )  # fmt: skip
        finally:
            who = gitsafe.identity(asked)
        agentrepo.write(path, "objects/info/alternates", (self.repo.objects + "\n").encode())
        agentrepo.write(path, f"refs/heads/{full}", (head + "\n").encode())
        name, email = who["GIT_AUTHOR_NAME"], who["GIT_AUTHOR_EMAIL"]
        config = (agentrepo.read(path, "config", 1 << 20) or b"").decode(errors="replace")
        config += f"[user]\n\tname = {quoted(name)}\n\temail = {quoted(email)}\n"
        agentrepo.write(path, "config", config.encode())
        with tempfile.TemporaryDirectory(prefix="fleet-index-") as tmp:
            index = Path(tmp) / "index"
            env = {"GIT_INDEX_FILE": str(index)}
            if checkout:  # a new folder no pane has seen: attributes of the tree apply
                repo = ("--git-dir", str(path / ".git"), "--work-tree", str(path))
                gitsafe.run(
                    "check out the base", path, (*repo, "read-tree", "--reset", "-u", head), env
                )
            else:
                self.repo.on("make the agent's index", path, "read-tree", head, env=env)
            agentrepo.write(path, "index", index.read_bytes())

    def _own_repo(self, wt: Path) -> bool:
        """True: `wt` holds the agent's own repository (made again, at its branch as the user's
        repository has it, when the agent deleted it or emptied its `.git`); False: an older
        linked worktree of the user's repository. Anything else (`.git` a link, a stray file)
        is refused."""
        dot_git = wt / ".git"
        where = str(wt)
        emptied = dot_git.is_dir() and not dot_git.is_symlink() and not (dot_git / "HEAD").exists()
        if dot_git.is_dir() and not dot_git.is_symlink() and not emptied:
            return True
        if not emptied and (dot_git.is_symlink() or dot_git.exists()):
            if is_linked(dot_git, self.common):
                return False
            raise GitFailed("use the agent's repository", where,
                            ".git is neither its repository nor a linked worktree")  # fmt: skip
        branch = self.records.read(wt.name) if wt.parent == self.root else None
        head = self._commit_of(f"refs/heads/{branch}") if branch else None
        if not wt.is_dir() or branch is None or head is None:
            raise GitFailed("use the agent's repository", where, "it has no .git any more")
        self._init(wt, branch, head, checkout=False)
        agentrepo.hand_back(wt)  # its repository again, its user's
        return True

    def migrate(self, agent_id: str) -> bool:
        """An agent made before agents had repositories of their own keeps a linked worktree,
        whose panes write the user's git directory: make its folder a repository of its own
        (infra/agentrepo.py), on the same branch at the same commit, with the same index (so
        what it staged stays staged), and drop the user's record of the linked worktree.
        The files are not touched. True when it was migrated, False when there was nothing to
        migrate; GitFailed, with the reason, when it cannot be (its HEAD is not on one of
        fleetd's branches, or the user's record of it is not a folder)."""
        path = self.path_for(agent_id)
        dot_git = path / ".git"
        where = str(path)
        if not is_linked(dot_git, self.common):
            return False
        admin = Path(os.path.normpath(path / gitfile(dot_git)))
        if admin.is_symlink() or not admin.is_dir():
            raise GitFailed("migrate the linked worktree", where, f"{admin} is not a folder")
        raw = read_plain(admin / "HEAD", 4096).decode(errors="replace").strip()
        ref = raw.removeprefix("ref: ").strip() if raw.startswith("ref: ") else None
        branch = ref.removeprefix("refs/heads/") if ref else None
        if branch is None or not branch.startswith(BRANCH_PREFIX) or not _REF.fullmatch(branch):
            why = f"its HEAD ({raw[:80]!r}) is not on a {BRANCH_PREFIX} branch of fleetd's"
            raise GitFailed("migrate the linked worktree", where, why)
        head = self._commit_of(f"refs/heads/{branch}")
        if head is None:
            raise GitFailed("migrate the linked worktree", where, f"{branch} names no commit")
        index = read_plain(admin / "index", agentrepo.MAX_READ)
        dot_git.unlink()
        self.records.write(agent_id, branch)
        self._init(path, branch, head, checkout=False)
        if index:
            agentrepo.write(path, "index", index)  # its staged changes, its files' stat data
        shutil.rmtree(admin)
        self.repo.git("forget the linked worktree", "worktree", "prune")
        agentrepo.hand_back(path)
        return True

    # -- what the agent has -----------------------------------------------------------------

    def head_of(self, path: str | Path) -> str:
        """The commit the agent's HEAD is at; where its repository no longer says (HEAD or its
        branch deleted), the agent's branch as the user's repository has it."""
        wt = Path(path)
        try:
            return agentrepo.head(wt)[1]
        except GitFailed:
            meta = self.records.read(wt.name)
            found = self._commit_of(f"refs/heads/{meta}") if meta else None
            if found is None:
                raise
            return found

    def is_dirty(self, path: str | Path) -> bool:
        """Tracked changes (staged or not) or untracked files that are not ignored."""
        wt = Path(path)
        if not self._own_repo(wt):
            return self._legacy.is_dirty(wt)
        return snapshots.is_dirty(self.repo, wt, self.head_of(wt), self.jail)

    def unmerged_commits(self, path: str | Path, base_ref: str) -> int:
        """Commits on the agent's HEAD that `base_ref` (of the user's repository) lacks."""
        wt = Path(path)
        base = _ref("base ref", base_ref)
        if not self._own_repo(wt):
            return self._legacy.unmerged_commits(wt, base)
        return snapshots.unmerged_commits(self.repo, wt, self.head_of(wt), base)

    def save_to_ref(self, path: str | Path, ref: str, index_file: str | Path | None = None) -> str:
        """Commit the whole worktree (tracked + untracked, not ignored) to `ref` of the user's
        repository, its parent the agent's HEAD; its sha (infra/snapshots.py: `save`)."""
        if not _ref("git ref", ref).startswith("refs/"):
            raise InvalidName("git ref", ref, "a saved state's ref must start with refs/")
        wt = Path(path)
        if not self._own_repo(wt):
            return self._legacy.save_to_ref(wt, ref, index_file)
        return snapshots.save(self.repo, wt, self.head_of(wt), ref, index_file, self.jail)

    def restore(self, path: str | Path, commit: str, index_file: str | Path | None = None) -> None:
        """Make the worktree what `save_to_ref` saved in `commit`, and the agent's branch and
        index what they were then (infra/snapshots.py: `restore`)."""
        sha = _ref("commit", commit)
        wt = Path(path)
        if not self._own_repo(wt):
            return self._legacy.restore(wt, sha, index_file)
        snapshots.restore(self.repo, wt, sha, index_file, self.jail)

    # -- bringing work back, removing -------------------------------------------------------

    def bring_back(self, agent_id: str) -> str | None:
        """Set the agent's branch in the user's repository to the agent's HEAD (its objects
        copied in); the commit, or None when there is nothing to bring (no such repository,
        or the branch is checked out in one of the user's own worktrees)."""
        path = self.path_for(agent_id)
        branch = self.records.read(agent_id)
        if branch is None or not agentrepo.is_agent_repo(path) or self._checked_out(branch):
            return None
        head = self.head_of(path)
        if self.repo.names(f"refs/heads/{branch}", head):
            return head  # there already (the agent made no commit): no git runs at all
        self.repo.take_in(path, head)
        self.repo.git("bring the branch back", "update-ref", f"refs/heads/{branch}", head)
        return head

    def remove(
        self,
        agent_id: str,
        force: bool = False,
        base_ref: str | None = None,
        delete_branch: bool = False,
    ) -> str | None:
        """Remove the agent's repository; return the saved-state ref when one was written.

        Its branch is first brought back into the user's repository. Refused with
        WorktreeHasWork when it is dirty or has commits `base_ref` (default: the user's HEAD)
        lacks, unless `force`; then the state is saved first. The branch is kept unless
        `delete_branch` (its commits stay reachable from the saved ref).
        """
        path = self.path_for(agent_id)
        dot_git = path / ".git"
        if (
            force
            and (dot_git.is_symlink() or dot_git.is_file())
            and not is_linked(dot_git, self.common)
        ):
            dot_git.unlink()  # a stray .git in its place: the repository is made again below
        if not path.exists() or not self._own_repo(path):
            saved = self._legacy.remove(agent_id, path, force, base_ref, delete_branch)
            self.records.forget(agent_id)
            return saved
        branch = self.records.read(agent_id)
        self.bring_back(agent_id)
        dirty = self.is_dirty(path)
        unmerged = self.unmerged_commits(path, base_ref or self.repo.main_head())
        saved = None
        if dirty or unmerged:
            if not force:
                raise WorktreeHasWork(agent_id, str(path), dirty, unmerged)
            saved = f"{SAVED_PREFIX}{agent_id}/{_stamp()}"
            self.save_to_ref(path, saved)
        shutil.rmtree(path)
        self.records.forget(agent_id)
        if delete_branch and branch and branch.startswith(BRANCH_PREFIX):
            self.repo.git("delete the branch", "update-ref", "-d", f"refs/heads/{branch}")
        return saved

    def delete_branch(self, branch: str, agent_id: str = "") -> str | None:
        """Delete the user's `fleet/` branch `branch`; commits its HEAD lacks are first kept
        under a ref of refs/fleet/saved/ (answered)."""
        if not branch.startswith(BRANCH_PREFIX):
            raise InvalidName("branch", branch, f"only {BRANCH_PREFIX} branches are fleetd's")
        full = f"refs/heads/{_ref('branch', branch)}"
        sha = self.repo.git(f"delete branch {branch}", "rev-parse", "--verify", full)
        saved = None
        if int(self.repo.git("count commits", "rev-list", "--count", f"HEAD..{sha}")):
            saved = f"{SAVED_PREFIX}{agent_id or 'branch'}/{_stamp()}"
            self.repo.git("keep the branch's commits", "update-ref", saved, sha)
        if self._checked_out(branch):
            raise GitFailed(f"delete branch {branch}", str(self.main), "it is checked out")
        self.repo.git(f"delete branch {branch}", "update-ref", "-d", full, sha)
        return saved

    def _commit_of(self, ref: str) -> str | None:
        return self.repo.commit_of(ref)

    def _checked_out(self, branch: str) -> bool:
        return self.repo.checked_out(branch)

    # -- listing ----------------------------------------------------------------------------

    def list_fleet_worktrees(self) -> list[WorktreeInfo]:
        """Agents' repositories of this user repository, and its linked worktrees on a `fleet/`
        branch or under the root (for orphan detection)."""
        found = [
            WorktreeInfo(path, branch, head, agent)
            for path, branch, head, agent in self._legacy.listed()
        ]
        for agent_id, branch in self.records.listed():
            path = self.root / agent_id
            if not agentrepo.is_agent_repo(path):
                continue
            try:
                head = agentrepo.head(path)[1]
            except GitFailed:
                head = ""
            found.append(WorktreeInfo(path, branch, head, agent_id))
        return found

    def list_fleet_branches(self) -> list[str]:
        """Short names of every `fleet/` branch, with or without a repository."""
        out = self.repo.git(
            "list branches",
            "for-each-ref", "--format=%(refname:short)", f"refs/heads/{BRANCH_PREFIX}",
        )  # fmt: skip
        return out.splitlines()


def _stamp() -> str:
    from datetime import UTC, datetime

    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"

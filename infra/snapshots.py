"""An agent's files saved into, and restored from, the user's repository (checkpoints, saved
states at a forced removal), and the questions a removal asks (dirty? unmerged commits?).

Every call reads the agent's repository only as files (infra/agentrepo.py: its index and
excludes copied, its objects borrowed read-only for the call) and writes objects and refs only
to the user's repository (infra/userrepo.py). A save leaves the agent's branch, index and files
as they were; a restore writes the agent's files, and its index and branch, from the user's
repository alone, so an agent that pruned its own objects loses nothing a rollback needs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from infra import agentrepo, gitsafe
from infra.userrepo import UserRepo
from schemas.errors import GitFailed


def is_dirty(repo: UserRepo, wt: Path, head: str) -> bool:
    """Tracked changes (staged or not) against `head`, or untracked files that are not ignored."""
    with tempfile.TemporaryDirectory(prefix="fleet-index-") as name:
        tmp = Path(name)
        repo.copy_agent_index(wt, tmp / "index")
        env = repo.agent_env(wt, tmp / "index")
        repo.on("refresh the index", wt, "update-index", "-q", "--refresh", env=env, ok=(0, 1))
        changed, _ = repo.on(
            "compare with HEAD", wt, "diff-index", "--quiet", head, "--", env=env, ok=(0, 1)
        )
        if changed:
            return True
        _, untracked = repo.on(
            "list untracked files", wt, "ls-files", "-o", "--exclude-standard",
            "--directory", "--no-empty-directory", env=env, excludes=repo.excludes(wt, tmp),
        )  # fmt: skip
        return bool(untracked)


def unmerged_commits(repo: UserRepo, wt: Path, head: str, base: str) -> int:
    """Commits on `head` (the agent's) that `base` (of the user's repository) lacks."""
    env = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": agentrepo.objects_dir(wt, repo.objects)}
    return int(repo.git("count commits", "rev-list", "--count", f"{base}..{head}", env=env))


def save(repo: UserRepo, wt: Path, head: str, ref: str, index_file: str | Path | None) -> str:
    """Commit the agent's files (tracked + untracked, not ignored), parent `head`, to `ref` of
    the user's repository, with every object it reaches copied there; its sha.

    A temporary index (a copy of the agent's, so unchanged files are not re-hashed) takes
    `git add -A`. With `index_file` (checkpoints) that index is kept between saves, so a save
    re-hashes only the files changed since the previous one. A save that fails with a kept
    index is tried once more from nothing (every file hashed, none of the agent's objects
    trusted): the kept index may name objects that are gone. A second failure is raised.
    """
    asked = gitsafe.ask_identity(repo.main)  # read while git stages
    who: dict[str, str] | None = None

    def attempt(tmp: Path, index: Path, fresh: bool) -> str:
        nonlocal who
        # A git ended mid-way (a timeout) leaves its lock; only this save uses this index.
        index.with_name(index.name + ".lock").unlink(missing_ok=True)
        tree = _snapshot(repo, wt, tmp, index, fresh)
        who = gitsafe.identity(asked) if who is None else who
        borrow = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": agentrepo.objects_dir(wt, repo.objects)}
        message = f"fleet: saved state of {wt.name}"
        sha = repo.git(
            "commit the state", "commit-tree", tree, "-p", head, "-m", message, env=who | borrow
        )
        repo.take_in(wt, sha)
        return sha

    try:
        with tempfile.TemporaryDirectory(prefix="fleet-index-") as name:
            tmp = Path(name)
            index = Path(index_file) if index_file is not None else tmp / "index"
            try:
                sha = attempt(tmp, index, fresh=False)
            except GitFailed:
                if index_file is None:
                    raise
                index.unlink(missing_ok=True)  # rebuilt from the files themselves
                sha = attempt(tmp, index, fresh=True)
    finally:
        if who is None:
            gitsafe.identity(asked)  # its process reaped, whatever happened
    repo.git("store the state", "update-ref", ref, sha)
    return sha


def _snapshot(repo: UserRepo, wt: Path, tmp: Path, index: Path, fresh: bool) -> str:
    """`add -A` of the agent's files into `index`; its tree. A missing index starts as a copy
    of the agent's, unless `fresh`: then from nothing, and blobs the agent's repository has are
    not borrowed either (each is written to the user's repository)."""
    if not index.exists():
        if fresh:
            index.parent.mkdir(parents=True, exist_ok=True)
        else:
            repo.copy_agent_index(wt, index)
    env = repo.agent_env(wt, index)
    if fresh:
        env.pop("GIT_ALTERNATE_OBJECT_DIRECTORIES")
    excludes = repo.excludes(wt, tmp)
    repo.on("stage the worktree", wt, "add", "-A", env=env, excludes=excludes)
    return repo.on("write a tree", wt, "write-tree", env=env)[1]


def restore(repo: UserRepo, wt: Path, sha: str, index_file: str | Path | None) -> None:
    """Make the agent's files what `save` saved in `sha`, and its branch and index what they
    were then (the commit's parent): files written since disappear, deleted ones come back,
    untracked files made since are removed, ignored files are kept (`clean` without `-x`);
    files that were untracked then are untracked again.

    With `index_file` (the index `save` kept, matching the files as just saved) only the files
    that differ from `sha` are written (`read-tree --reset -u` keeps the stat data of unchanged
    entries); without it, every file is.
    """
    parent = repo.git("read the saved state", "rev-parse", "--verify", "-q", f"{sha}^")
    with tempfile.TemporaryDirectory(prefix="fleet-index-") as name:
        tmp = Path(name)
        kept = index_file is not None and Path(index_file).exists()
        index = Path(index_file) if kept and index_file is not None else tmp / "index"
        index.with_name(index.name + ".lock").unlink(missing_ok=True)  # see `save`
        env = repo.agent_env(wt, index)  # also puts the agent's alternates back
        env.pop("GIT_ALTERNATE_OBJECT_DIRECTORIES")  # the user's objects are all it needs
        repo.on("restore the saved files", wt, "read-tree", "--reset", "-u", sha, env=env)
        excludes = repo.excludes(wt, tmp)
        repo.on(
            "remove files made since", wt, "clean", "-q", "-f", "-d", env=env, excludes=excludes
        )
        theirs = tmp / "agent-index"
        shutil.copyfile(index, theirs)
        env["GIT_INDEX_FILE"] = str(theirs)
        repo.on("reset the agent's index", wt, "read-tree", "--reset", parent, env=env)
        agentrepo.write(wt, "index", theirs.read_bytes())
    branch = agentrepo.symref(wt)
    agentrepo.write(wt, branch or "HEAD", (parent + "\n").encode())
    agentrepo.hand_back(wt)  # the files git wrote are the agent's user's

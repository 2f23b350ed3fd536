"""An agent's files saved into, and restored from, the user's repository (checkpoints, saved
states at a forced removal), and the questions a removal asks (dirty? unmerged commits?).

Every call reads the agent's repository only as files (infra/agentrepo.py: its index and
excludes copied, its objects borrowed read-only for the call) and writes objects and refs only
to the user's repository (infra/userrepo.py). A save leaves the agent's branch, index and files
as they were; a restore writes the agent's files, and its index and branch, from the user's
repository alone, so an agent that pruned its own objects loses nothing a rollback needs.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infra import agentrepo, gitsafe
from infra.gitjail import Jail
from infra.userrepo import ALTERNATES, UserRepo
from schemas.errors import GitFailed


def is_dirty(repo: UserRepo, wt: Path, head: str, jail: Jail | None = None) -> bool:
    """Tracked changes (staged or not) against `head`, or untracked files that are not ignored
    (with an active `jail`, read in the agent's confinement)."""
    with _tmp(jail) as tmp:
        _copy_index(repo, wt, tmp / "index", jail)
        env = repo.agent_env(wt, tmp / "index")
        refresh = (REFRESH, env)
        changed, _ = repo.on_all(
            "compare with HEAD", wt, [refresh, (("diff-index", "--quiet", head, "--"), env)],
            jail=jail, ok=(0, 1),
        )  # fmt: skip
        if changed:
            return True
        excludes = _excludes(wt, tmp, jail)
        _, untracked = repo.on_all(
            "list untracked files", wt, [(LIST_UNTRACKED, env)], jail=jail, excludes=excludes
        )
        return bool(untracked)


REFRESH = ("update-index", "-q", "--refresh")  # -q: exit 0 when files changed
LIST_UNTRACKED = ("ls-files", "-o", "--exclude-standard", "--directory", "--no-empty-directory")


def unmerged_commits(repo: UserRepo, wt: Path, head: str, base: str) -> int:
    """Commits on `head` (the agent's) that `base` (of the user's repository) lacks."""
    env = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": agentrepo.objects_dir(wt, repo.objects)}
    return int(repo.git("count commits", "rev-list", "--count", f"{base}..{head}", env=env))


def save(
    repo: UserRepo,
    wt: Path,
    head: str,
    ref: str,
    index_file: str | Path | None,
    jail: Jail | None = None,
) -> str:
    """Commit the agent's files (tracked + untracked, not ignored), parent `head`, to `ref` of
    the user's repository, with every object it reaches copied there; its sha.

    A temporary index (a copy of the agent's, so unchanged files are not re-hashed) takes
    `git add -A`. With `index_file` (checkpoints) that index is kept between saves, so a save
    re-hashes only the files changed since the previous one. A save that fails with a kept
    index is tried once more from nothing (every file hashed, none of the agent's objects
    trusted): the kept index may name objects that are gone. A second failure is raised.
    With an active `jail` the files are read in the agent's confinement (infra/gitjail.py):
    the index is then the jail's, and the objects made there are taken into the user's
    repository once the commit names them.
    """
    asked = gitsafe.ask_identity(repo.main)  # read while git stages
    who: dict[str, str] | None = None
    made = jail.objects if jail is not None and jail.active else None

    def attempt(tmp: Path, index: Path, fresh: bool) -> str:
        nonlocal who
        # A git ended mid-way (a timeout) leaves its lock; only this save uses this index.
        index.with_name(index.name + ".lock").unlink(missing_ok=True)
        tree = _snapshot(repo, wt, tmp, index, fresh, jail)
        who = gitsafe.identity(asked) if who is None else who
        found = [agentrepo.objects_dir(wt, repo.objects), *([str(made)] if made else [])]
        borrow = {ALTERNATES: ":".join(found)}
        message = f"fleet: saved state of {wt.name}"
        sha = repo.git(
            "commit the state", "commit-tree", tree, "-p", head, "-m", message, env=who | borrow
        )
        repo.take_in(wt, sha, made)
        return sha

    try:
        with _tmp(jail) as tmp:
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
    if jail is not None and made is not None:
        jail.clear_objects()  # in the user's repository now
    return sha


def _snapshot(
    repo: UserRepo, wt: Path, tmp: Path, index: Path, fresh: bool, jail: Jail | None
) -> str:
    """`add -A` of the agent's files into `index`; its tree. A missing index starts as a copy
    of the agent's, unless `fresh`: then from nothing, and blobs the agent's repository has are
    not borrowed either (each is written to the user's repository, or the jail's objects)."""
    if not index.exists():
        if fresh:
            index.parent.mkdir(parents=True, exist_ok=True)
        else:
            _copy_index(repo, wt, index, jail)
    env = repo.agent_env(wt, index)
    if fresh:
        env.pop(ALTERNATES)
    excludes = _excludes(wt, tmp, jail)
    # A refresh first: a file whose stat data changed but not its bytes (a chown at spawn, a
    # rewrite with the same content) is only hashed, not stored again. `add` would write each
    # one as a new object, and a jailed git cannot freshen (utime) the user's copy it reads
    # read-only, so it compresses a copy of its own: seconds for a 50 MB worktree.
    calls = [(REFRESH, env), (("add", "-A"), env), (("write-tree",), env)]
    return repo.on_all("stage the worktree", wt, calls, jail=jail, excludes=excludes)[1]


def restore(
    repo: UserRepo, wt: Path, sha: str, index_file: str | Path | None, jail: Jail | None = None
) -> None:
    """Make the agent's files what `save` saved in `sha`, and its branch and index what they
    were then (the commit's parent): files written since disappear, deleted ones come back,
    untracked files made since are removed, ignored files are kept (`clean` without `-x`);
    files that were untracked then are untracked again.

    With `index_file` (the index `save` kept, matching the files as just saved) only the files
    that differ from `sha` are written (`read-tree --reset -u` keeps the stat data of unchanged
    entries); without it, every file is. With an active `jail` the files are written in the
    agent's confinement, as its own user (infra/gitjail.py): a folder swapped for a link leads
    only where the agent could write itself.
    """
    parent = repo.git("read the saved state", "rev-parse", "--verify", "-q", f"{sha}^")
    with _tmp(jail) as tmp:
        kept = index_file is not None and Path(index_file).exists()
        index = Path(index_file) if kept and index_file is not None else tmp / "index"
        index.with_name(index.name + ".lock").unlink(missing_ok=True)  # see `save`
        env = repo.agent_env(wt, index)  # also puts the agent's alternates back
        env.pop(ALTERNATES)  # the user's objects are all it needs
        theirs = tmp / "agent-index"
        calls = [
            (("read-tree", "--reset", "-u", sha), env),
            (("clean", "-q", "-f", "-d"), env),
            (("!cp", "--", str(index), str(theirs)), {}),
            (("read-tree", "--reset", parent), env | {"GIT_INDEX_FILE": str(theirs)}),
        ]
        excludes = _excludes(wt, tmp, jail)
        repo.on_all("restore the saved files", wt, calls, jail=jail, writes=True, excludes=excludes)
        agentrepo.write(wt, "index", Jail.get(theirs))
    branch = agentrepo.symref(wt)
    agentrepo.write(wt, branch or "HEAD", (parent + "\n").encode())
    agentrepo.hand_back(wt)  # what fleetd wrote (its index, its branch) is the agent's user's


@contextlib.contextmanager
def _tmp(jail: Jail | None) -> Iterator[Path]:
    """A folder for one step's files: the jail's, where the jailed git can reach it."""
    if jail is not None and jail.active:
        with jail.scratch() as path:
            yield path
        return
    with tempfile.TemporaryDirectory(prefix="fleet-index-") as name:
        yield Path(name)


def _copy_index(repo: UserRepo, wt: Path, index: Path, jail: Jail | None) -> None:
    if jail is None or not jail.active:
        repo.copy_agent_index(wt, index)
        return
    index.parent.mkdir(parents=True, exist_ok=True)
    data = agentrepo.read(wt, "index")
    if data:
        jail.put(index, data)


def _excludes(wt: Path, tmp: Path, jail: Jail | None) -> Path:
    if jail is None or not jail.active:
        return UserRepo.excludes(wt, tmp)
    path = tmp / "exclude"
    jail.put(path, agentrepo.read(wt, "info/exclude", 1 << 20) or b"")
    return path

"""Git worktrees for agents: one branch `fleet/<name>` and one directory per agent.

Work is never lost: removing a worktree that has uncommitted changes or unmerged commits
is refused, and with `force` its whole state (tracked and untracked files) is first
committed to a ref under `refs/fleet/saved/` through a temporary index, so neither the
branch nor the worktree's own index moves. The same `save_to_ref` serves checkpoints.

Branch policy for `add`: a new branch `fleet/<name>` is made from `base_ref`. If that
branch already exists and no worktree has it checked out (an agent that was stopped and
whose worktree was removed), it is reused as is, and `base_ref` is ignored: its commits
are the agent's earlier work. If a worktree has it checked out, `add` refuses.

Git runs as a plain subprocess (as GitPython's `Git.execute` ran it: C locale, no stdin), so an
agent actor's worker does not import GitPython (about 2.7 MB of its memory).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas.errors import GitFailed, InvalidName, WorktreeHasWork

BRANCH_PREFIX = "fleet/"
SAVED_PREFIX = "refs/fleet/saved/"
_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_REF = re.compile(r"[^-\s~^:?*\[\\][^\s~^:?*\[\\]*")
_IDENTITY = {  # used only when the repository has no user configured
    "GIT_AUTHOR_NAME": "fleetd",
    "GIT_AUTHOR_EMAIL": "fleetd@localhost",
    "GIT_COMMITTER_NAME": "fleetd",
    "GIT_COMMITTER_EMAIL": "fleetd@localhost",
}


@dataclass(frozen=True)
class WorktreeInfo:
    """One entry of `git worktree list` that belongs to the fleet."""

    path: Path
    branch: str | None  # short name, e.g. "fleet/a1"; None when detached
    head: str
    agent_id: str | None  # the directory name when it lies under the worktree root


def _token(what: str, value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise InvalidName(what, value, "use 1 to 64 letters, digits, '_' and '-', not first")
    return value


def _ref(what: str, value: str) -> str:
    """A ref or commit name that git can not read as an option or a revision expression."""
    if not _REF.fullmatch(value):
        raise InvalidName(what, value, "a git ref or sha: no leading '-', spaces or ~^:?*[\\")
    return value


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _top(repo_path: str | Path) -> Path:
    """The repository's top directory, found as `git.Repo(path)` found it: `path` holds a `.git`
    directory or file (a linked worktree's), or is a git directory itself."""
    path = Path(
        os.path.normpath(os.path.abspath(os.path.expandvars(os.path.expanduser(repo_path))))
    )
    dot_git = path / ".git"
    if _is_git_dir(dot_git) or (dot_git.is_file() and dot_git.read_text().startswith("gitdir:")):
        return path
    if _is_git_dir(path):
        return path.parent if path.name == ".git" else path
    raise GitFailed("open the repository", str(repo_path), "it is not a git repository")


def _run_git(action: str, where: str | Path, args: tuple[str, ...], env: dict[str, str]) -> str:
    """Run git in `where`; its output without the last newline. Any failure becomes one
    GitFailed sentence: git's last line of stderr."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=where,
            env={**os.environ, "LANGUAGE": "C", "LC_ALL": "C", **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError as e:  # no git, or no such directory to run it in
        raise GitFailed(action, str(where), f"cannot run git there ({e.strerror})") from e
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(action, str(where), (lines or [f"exit {done.returncode}"])[-1].strip("' "))
    return done.stdout.decode(errors="surrogateescape").removesuffix("\n")


class Worktrees:
    """The fleet's worktrees of one repository, kept under `root/<agent_id>`."""

    def __init__(self, repo_path: str | Path, root: str | Path) -> None:
        self.main = _top(repo_path)
        self.root = Path(root).absolute()

    def path_for(self, agent_id: str) -> Path:
        return self.root / _token("agent id", agent_id)

    def _git(self, action: str, where: str | Path, *args: str, **env: str) -> str:
        """Run git in `where`; any failure becomes one GitFailed sentence."""
        return _run_git(action, where, args, env)

    def add(self, agent_id: str, branch: str, base_ref: str) -> Path:
        """Create the agent's worktree on branch `fleet/<branch>`; return its path."""
        return self.create(agent_id, branch, base_ref).path

    def create(self, agent_id: str, branch: str, base_ref: str) -> WorktreeInfo:
        """`add`, answering the new worktree's entry, its HEAD included.

        The usual case takes two git calls: resolve the base, add the worktree on a new branch
        at that commit (which is then its HEAD). Only when that add is refused is the branch
        looked at: an existing one is reused as the module docstring says.
        """
        path = self.path_for(agent_id)
        full = BRANCH_PREFIX + _token("branch name", branch)
        where = str(self.main)
        if path.exists():
            raise GitFailed("add a worktree", where, f"{path} already exists")
        head = self._commit_of(base_ref) if _REF.fullmatch(base_ref) else None
        if head is not None:
            try:
                self._add_worktree(path, "-b", full, str(path), head)
                return WorktreeInfo(path, full, head, agent_id)
            except GitFailed:
                if not self._branch_exists(full):
                    raise
        elif not self._branch_exists(full):
            _ref("base ref", base_ref)
            raise GitFailed("add a worktree", where, f"base ref {base_ref!r} does not exist")
        if full in {w.branch for w in self.list_fleet_worktrees()}:
            raise GitFailed("add a worktree", where, f"branch {full} is checked out elsewhere")
        self._add_worktree(path, str(path), full)
        return WorktreeInfo(path, full, self._git("read HEAD", path, "rev-parse", "HEAD"), agent_id)

    def _add_worktree(self, path: Path, *args: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with _repo_lock(self.main):  # concurrent `worktree add`s in one repo race in .git/worktrees
            self._git("add a worktree", str(self.main), "worktree", "add", *args)

    def is_dirty(self, path: str | Path) -> bool:
        """Tracked changes (staged or not) or untracked files that are not ignored."""
        return bool(self._git("read the status", path, "status", "--porcelain", "-uall"))

    def unmerged_commits(self, path: str | Path, base_ref: str) -> int:
        """Commits on the worktree's HEAD that `base_ref` does not contain."""
        base = _ref("base ref", base_ref)
        out = self._git("count commits", path, "rev-list", "--count", f"{base}..HEAD")
        return int(out)

    def save_to_ref(self, path: str | Path, ref: str, index_file: str | Path | None = None) -> str:
        """Commit the whole worktree (tracked + untracked, not ignored) to `ref`; return its sha.

        A temporary index (a copy of the real one, so unchanged files are not re-hashed) takes
        `git add -A`; the commit's parent is HEAD. The branch, the real index and the files
        are untouched. With `index_file` (checkpoints), that index is kept between saves, so
        a save re-hashes only the files changed since the previous one; it starts as a copy of
        the real index.
        """
        if not _ref("git ref", ref).startswith("refs/"):
            raise InvalidName("git ref", ref, "a saved state's ref must start with refs/")
        # Few processes: a checkpoint's time is mostly theirs. `update-ref` checks the ref's
        # name (git check-ref-format rules) before it writes anything.
        real_index = self._index_path(path)
        asked = _ask_identity(path)  # read before the commit: git stages meanwhile
        try:
            with tempfile.TemporaryDirectory(prefix="fleet-index-") as tmp:
                index = Path(index_file) if index_file is not None else Path(tmp) / "index"
                if real_index.exists() and not index.exists():
                    index.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(real_index, index)
                env = {"GIT_INDEX_FILE": str(index)}  # staging needs no identity; the commit does
                self._git("stage the worktree", path, "add", "-A", **env)
                tree = self._git("write a tree", path, "write-tree", **env)
        finally:
            identity = _identity(asked)  # its answer, and the process reaped, whatever happened
        message = f"fleet: saved state of {Path(path).name}"
        sha = self._git(
            "commit the state", path, "commit-tree", tree, "-p", "HEAD", "-m", message, **identity
        )
        self._git("store the state", path, "update-ref", ref, sha)
        return sha

    def _index_path(self, path: str | Path) -> Path:
        """The worktree's index, read from its `.git` file (a linked worktree names its git
        dir there) or directory; `git rev-parse --git-path index` for anything else."""
        dot_git = Path(path) / ".git"
        if dot_git.is_dir():
            return dot_git / "index"
        try:
            first = dot_git.read_text().splitlines()[0]
        except (OSError, IndexError):
            first = ""
        if first.startswith("gitdir: "):
            gitdir = Path(first.removeprefix("gitdir: ").strip())
            return (gitdir if gitdir.is_absolute() else Path(path) / gitdir) / "index"
        found = Path(self._git("find the index", path, "rev-parse", "--git-path", "index"))
        return found if found.is_absolute() else Path(path) / found

    def restore(self, path: str | Path, commit: str, index_file: str | Path | None = None) -> None:
        """Make the worktree what `save_to_ref` saved in `commit`, and its branch what it was.

        Files written since disappear, deleted ones come back, untracked files made since are
        removed; ignored files are kept (`clean` without `-x`). The branch and the index return
        to the commit's parent (HEAD when the state was saved), so files that were untracked
        then are untracked again. Commits made since stay reachable from any later saved ref.

        With `index_file` (the index `save_to_ref` kept, matching the files as just saved) only
        the files that differ from `commit` are written: `read-tree --reset -u` is a one-way
        merge that keeps the stat data of unchanged entries. Without it, `reset --hard` goes
        through the real index, which rewrites every file that differs from HEAD.
        """
        sha = _ref("commit", commit)
        if index_file is not None and Path(index_file).exists():
            env = {"GIT_INDEX_FILE": str(index_file)}
            self._git("restore the saved files", path, "read-tree", "--reset", "-u", sha, **env)
            self._git("remove files made since", path, "clean", "-q", "-f", "-d", **env)
        else:
            self._git("restore the saved files", path, "reset", "-q", "--hard", sha)
            self._git("remove files made since", path, "clean", "-q", "-f", "-d")
        # --no-refresh: the next `git status` re-reads the files' stat data, not this reset.
        self._git("move the branch back", path, "reset", "-q", "--no-refresh", f"{sha}^")

    def remove(
        self,
        agent_id: str,
        force: bool = False,
        base_ref: str | None = None,
        delete_branch: bool = False,
    ) -> str | None:
        """Remove the agent's worktree; return the saved-state ref when one was written.

        Refused with WorktreeHasWork when it is dirty or has commits `base_ref` (default: the
        main worktree's HEAD) lacks, unless `force`; then the state is saved first. The branch
        is kept unless `delete_branch` (its commits stay reachable from the saved ref).
        """
        path = self.path_for(agent_id)
        where = str(self.main)
        if not path.exists():
            self._git("prune worktrees", where, "worktree", "prune")
            return None
        branch = self._git("read the branch", path, "rev-parse", "--abbrev-ref", "HEAD")
        dirty = self.is_dirty(path)
        unmerged = self.unmerged_commits(path, base_ref or self._main_head())
        saved = None
        if dirty or unmerged:
            if not force:
                raise WorktreeHasWork(agent_id, str(path), dirty, unmerged)
            saved = f"{SAVED_PREFIX}{agent_id}/{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
            self.save_to_ref(path, saved)
        self._git("remove the worktree", where, "worktree", "remove", "--force", str(path))
        self._git("prune worktrees", where, "worktree", "prune")
        if delete_branch and branch.startswith(BRANCH_PREFIX):
            self._git("delete the branch", where, "branch", "-D", branch)
        return saved

    def list_fleet_worktrees(self) -> list[WorktreeInfo]:
        """Worktrees on a `fleet/` branch or under the root (for orphan detection)."""
        out = self._git("list worktrees", self.main, "worktree", "list", "--porcelain")
        found = []
        for block in out.strip().split("\n\n"):
            fields = dict(line.partition(" ")[::2] for line in block.splitlines())
            path = Path(fields.get("worktree", ""))
            branch = fields.get("branch", "").removeprefix("refs/heads/") or None
            under_root = path.parent == self.root
            if under_root or (branch or "").startswith(BRANCH_PREFIX):
                agent = path.name if under_root else None
                found.append(WorktreeInfo(path, branch, fields.get("HEAD", ""), agent))
        return found

    def list_fleet_branches(self) -> list[str]:
        """Short names of every `fleet/` branch, with or without a worktree."""
        out = self._git(
            "list branches", self.main,
            "for-each-ref", "--format=%(refname:short)", f"refs/heads/{BRANCH_PREFIX}",
        )  # fmt: skip
        return out.splitlines()

    def _branch_exists(self, full: str) -> bool:
        return self._resolves(f"refs/heads/{full}")

    def _resolves(self, ref: str) -> bool:
        try:
            self._git("resolve a ref", self.main, "rev-parse", "--verify", "-q", ref)
        except GitFailed:
            return False
        return True

    def _commit_of(self, ref: str) -> str | None:
        """The sha of the commit `ref` names, or None when it names none."""
        try:
            return self._git(
                "resolve a ref", self.main, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"
            )
        except GitFailed:
            return None

    def _main_head(self) -> str:
        return self._git("read HEAD", self.main, "rev-parse", "HEAD")


def _ask_identity(path: str | Path) -> subprocess.Popen[bytes] | None:
    """Start reading user.name and user.email (one process for both keys); `_identity` reads
    its answer. None when git cannot even start there."""
    try:
        return subprocess.Popen(
            ["git", "config", "--get-regexp", r"^user\.(name|email)$"],
            cwd=path,
            env={**os.environ, "LANGUAGE": "C", "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def _identity(asked: subprocess.Popen[bytes] | None) -> dict[str, str]:
    """Author/committer env only where neither git config nor env names one (bare CI)."""
    out = asked.communicate()[0].decode(errors="replace") if asked is not None else ""
    if asked is not None and asked.returncode != 0:
        out = ""  # exit status 1 when neither is set
    found = {line.split(" ", 1)[0] for line in out.splitlines()}
    env: dict[str, str] = {}
    for key, part in (("user.name", "NAME"), ("user.email", "EMAIL")):
        if key not in found:
            for var in (f"GIT_AUTHOR_{part}", f"GIT_COMMITTER_{part}"):
                if var not in os.environ:
                    env[var] = _IDENTITY[var]
    return env


def common_dir(worktree: str | Path) -> str:
    """The absolute git directory a worktree shares with its repository (where its commits go),
    "" when it is none. Read from the worktree's `.git` and its `commondir` file (the layout of
    gitrepository-layout(5)) without running git; git is asked only for another layout."""
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
    done = subprocess.run(
        ["git", "-C", str(worktree), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


@contextlib.contextmanager
def _repo_lock(repo: Path) -> Iterator[None]:
    """One `git worktree add` at a time per repository on this machine (every process):
    git writes .git/worktrees/<name>/ in steps another add can read half-made."""
    key = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"fleetd-worktree-{key}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""The files around an agent's repository that fleetd reads and writes without running git in
it (infra/worktree.py keeps the repositories themselves).

- `Records`: fleetd's own record of each agent's branch, `<root>/<META>/<agent id>`. The branch
  is read from here, never from the agent's repository, which the agent can write.
- `paths_for_pane`: what a pane may reach for git, read-only and writable.
- `exclude_untracked`: a name in the agent's own info/exclude (the ports' `.env`).
- `read_plain`, `gitfile`, `quoted`: a regular file's bytes without following a link, the git
  dir a `.git` file names, a git config value.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra import agentrepo, gitsafe
from infra.userrepo import META, borrowed_objects, top
from infra.worktree_legacy import LegacyWorktrees, common_dir
from schemas.errors import InvalidName

_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def checked_token(what: str, value: str) -> str:
    """`value` if it is a safe agent id or branch name (the folder and ref names fleetd makes)."""
    if not _TOKEN.fullmatch(value):
        raise InvalidName(what, value, "use 1 to 64 letters, digits, '_' and '-', not first")
    return value


@dataclass(frozen=True)
class Records:
    """The branch of each agent of one user repository (`common`, its git dir), under `root`."""

    root: Path
    common: Path

    def path(self, agent_id: str) -> Path:
        return self.root / META / checked_token("agent id", agent_id)

    def write(self, agent_id: str, branch: str) -> None:
        path = self.path(agent_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(f"branch={branch}\nrepo={self.common}\n")

    def read(self, agent_id: str) -> str | None:
        """The agent's branch, when the record is this repository's."""
        branch, repo = _parse(self.path(agent_id))
        return branch if repo == str(self.common) else None

    def forget(self, agent_id: str) -> None:
        self.path(agent_id).unlink(missing_ok=True)

    def listed(self) -> Iterator[tuple[str, str | None]]:
        """(agent id, branch) of every record of this repository, by agent id."""
        folder = self.root / META
        for meta in sorted(folder.iterdir()) if folder.is_dir() else []:
            branch, repo = _parse(meta)
            if repo == str(self.common):
                yield meta.name, branch


def _parse(path: Path) -> tuple[str | None, str | None]:
    try:
        fields = dict(line.partition("=")[::2] for line in path.read_text().splitlines())
    except OSError:
        return None, None
    return fields.get("branch"), fields.get("repo")


def paths_for_pane(repo_path: str | Path, worktree: str | Path) -> tuple[list[str], list[str]]:
    """What an agent's processes need for git in their repository: (read-only, writable).

    Writable: the agent's directory (its `.git` is inside). Read-only: the object directories
    its repository borrows (the user's). Nothing else of the user's repository: not its refs,
    config, hooks or index. An older agent's linked worktree still needs the user's git
    directory writable (its commits go there); that is the one case the second list has it.
    """
    wt = Path(worktree)
    common = common_dir(top(repo_path))
    if agentrepo.is_agent_repo(wt) or not wt.exists():
        return borrowed_objects(common), [str(wt)]
    linked = common_dir(wt)
    return [], [str(wt), *([linked] if linked else [])]


def exclude_untracked(worktree: Path, name: str) -> None:
    """`/<name>` in the agent's own info/exclude, unless the agent tracks `name` (the ports'
    `.env`: kept out of the agent's `git status`, and out of checkpoints, which read that file).
    For an older linked worktree, the repository's info/exclude as before."""
    if not agentrepo.is_agent_repo(worktree):
        return LegacyWorktrees.exclude_untracked(worktree, name)
    tracked = _index_has(worktree, name)
    if tracked:
        return  # the project tracks it: changing what git shows is its business
    text = (agentrepo.read(worktree, "info/exclude", 1 << 20) or b"").decode(errors="replace")
    if f"/{name}" not in text.splitlines():
        sep = "" if text.endswith("\n") or not text else "\n"
        agentrepo.write(worktree, "info/exclude", (text + sep + f"/{name}\n").encode())


def _index_has(worktree: Path, name: str) -> bool:
    """The agent's index has an entry `name` (at the top level), read by git from a copy."""
    with tempfile.TemporaryDirectory(prefix="fleet-index-") as tmp:
        index = Path(tmp) / "index"
        data = agentrepo.read(worktree, "index")
        if not data:
            return False
        index.write_bytes(data)
        empty = Path(tmp) / "git"  # a repository of nothing: ls-files reads only the index
        gitsafe.run(
            "make a scratch repository", tmp, ("init", "-q", "--bare", "--template=", str(empty))
        )
        _, out = gitsafe.run_status(
            "read the agent's index", tmp,
            ("--git-dir", str(empty), "--work-tree", tmp, "ls-files", "--", name),
            {"GIT_INDEX_FILE": str(index)},
        )  # fmt: skip
        return bool(out)


def gitfile(dot_git: Path) -> str:
    return dot_git.read_text(errors="replace").strip().removeprefix("gitdir:").strip()


def read_plain(path: Path, limit: int) -> bytes:
    """A regular file's bytes (b"" when missing, a link or not a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return b""
        return f.read(limit + 1)[:limit]


def quoted(value: str) -> str:
    """A git config value in double quotes (backslash and quote escaped, no newlines)."""
    clean = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{clean}"'


def is_linked(dot_git: Path, common: Path) -> bool:
    """`.git` is a plain file naming a git dir under `worktrees/` of `common` (the user's git
    dir): an older agent's linked worktree."""
    if dot_git.is_symlink() or not dot_git.is_file():
        return False
    try:
        named = gitfile(dot_git)
    except OSError:
        return False
    found = Path(os.path.normpath(dot_git.parent / named))
    return found.parent == common / "worktrees"

"""An agent's own repository, read and written by the control plane without git running in it.

An agent works in a repository of its own, `<worktree root>/<agent id>/.git`, whose objects
borrow the user's (`objects/info/alternates`). Its config, hooks, refs and index are the
agent's to write, so the control plane never runs git with it as its repository: it reads the
few files it needs here (HEAD and the branch it names, the index, info/exclude) and, at a
rollback, writes the branch and the index back the same way. Every path is opened one
component at a time without following symbolic links (`O_NOFOLLOW` below a directory fd), a
file is read only when it is a regular one of bounded size (a FIFO does not block us), and a
write goes to a new file that is renamed over the old one: a link an agent planted is replaced,
never written through. Files made here get the owner of the agent's `.git` directory, so an
agent running as its own uid can go on updating them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import GitFailed

SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_BRANCH_REF = re.compile(r"refs/heads/[A-Za-z0-9_][A-Za-z0-9_./-]{0,200}")
MAX_READ = 64 << 20  # an index of a very big tree; anything larger is not one of ours
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def git_dir(worktree: str | Path) -> Path:
    return Path(worktree) / ".git"


def is_agent_repo(worktree: str | Path) -> bool:
    """The worktree holds a repository of its own (not a linked worktree's `.git` file)."""
    dot_git = git_dir(worktree)
    return dot_git.is_dir() and not dot_git.is_symlink()


def _parts(rel: str) -> list[str]:
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return parts


@contextlib.contextmanager
def _dir(worktree: str | Path, parts: list[str], make: bool = False) -> Iterator[int]:
    """A descriptor of `<worktree>/.git/<parts...>`, reached without following any link."""
    fd = os.open(git_dir(worktree), _DIR)
    try:
        owner = os.fstat(fd)
        for part in parts:
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR, dir_fd=fd)
                _own(nxt, owner)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _own(fd: int, owner: os.stat_result) -> None:
    if os.geteuid() == 0 and os.fstat(fd).st_uid != owner.st_uid:
        os.fchown(fd, owner.st_uid, owner.st_gid)


def read(worktree: str | Path, rel: str, limit: int = MAX_READ) -> bytes | None:
    """The bytes of `.git/<rel>`; None when it is missing or is not a regular file."""
    *folder, name = _parts(rel)
    try:
        with _dir(worktree, folder) as parent:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=parent)  # fmt: skip
    except OSError:  # missing, a link, a directory where a file should be
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return f.read(limit + 1)[:limit]


def write(worktree: str | Path, rel: str, data: bytes) -> None:
    """Replace `.git/<rel>` with `data` (folders made as needed), atomically, through no link."""
    *folder, name = _parts(rel)
    try:
        with _dir(worktree, folder, make=True) as parent:
            owner = os.fstat(parent)
            tmp = f".fleet-{secrets.token_hex(8)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=parent)  # fmt: skip
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    _own(f.fileno(), owner)
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)
                raise
    except OSError as e:
        where = str(git_dir(worktree))
        raise GitFailed("write the agent's repository", where, f"{rel}: {e.strerror}") from e


def head(worktree: str | Path) -> tuple[str | None, str]:
    """The branch the agent's HEAD names (None when detached) and the commit it is at."""
    where = str(git_dir(worktree))
    raw = (read(worktree, "HEAD", 4096) or b"").decode(errors="replace").strip()
    if SHA.fullmatch(raw):
        return None, raw
    ref = symref(worktree)
    if ref is None:
        raise GitFailed("read the agent's HEAD", where, "HEAD names no branch or commit")
    sha = ref_value(worktree, ref)
    if sha is None:
        raise GitFailed("read the agent's HEAD", where, f"its branch {ref} names no commit")
    return ref, sha


def symref(worktree: str | Path) -> str | None:
    """The branch the agent's HEAD names, when it names a well-formed one."""
    raw = (read(worktree, "HEAD", 4096) or b"").decode(errors="replace").strip()
    ref = raw.removeprefix("ref: ").strip()
    ok = raw.startswith("ref: ") and _BRANCH_REF.fullmatch(ref) and ".." not in ref
    return ref if ok else None


def ref_value(worktree: str | Path, ref: str) -> str | None:
    """The commit a branch of the agent's repository names: loose file, else packed-refs."""
    loose = (read(worktree, ref, 4096) or b"").decode(errors="replace").strip()
    if SHA.fullmatch(loose):
        return loose
    packed = (read(worktree, "packed-refs") or b"").decode(errors="replace")
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name == ref and SHA.fullmatch(sha):
            return sha
    return None


def holds_objects(worktree: str | Path) -> bool:
    """Whether the agent's repository has objects of its own (a loose object's folder or a
    pack), beside those it borrows. Without any, whatever its HEAD and index name is in the
    user's repository already. True when it cannot tell."""
    try:
        with _dir(worktree, ["objects"]) as fd:
            names = [n for n in os.listdir(fd) if n != "info"]
        if names == ["pack"]:
            with _dir(worktree, ["objects", "pack"]) as fd:
                return bool(os.listdir(fd))
    except OSError:  # missing, a link: let git look
        return True
    return bool(names)


def objects_dir(worktree: str | Path, borrowed: str) -> str:
    """The agent's object directory, for the control plane to read objects from, after making
    sure it borrows exactly `borrowed` (the user's objects) and is a directory of its own: an
    agent that pointed its alternates at another store gets them put back."""
    where = str(git_dir(worktree))
    want = (borrowed + "\n").encode()
    if read(worktree, "objects/info/alternates", 1 << 16) != want:
        write(worktree, "objects/info/alternates", want)
    try:
        with _dir(worktree, ["objects"]):
            pass
    except OSError as e:
        raise GitFailed("read the agent's objects", where, "objects is not a directory") from e
    return str(git_dir(worktree) / "objects")


def hand_back(worktree: str | Path) -> None:
    """fleetd as root: what it wrote in the agent's folder (a rollback's files, a repository
    made again) given to the folder's owner, the agent's own user, so the agent can go on
    changing its files. The walk holds a descriptor of each folder (`os.fwalk`), so a folder
    swapped for a link meanwhile leads nowhere else."""
    if os.geteuid() != 0:
        return
    top = os.lstat(worktree)
    if top.st_uid == 0 or not stat.S_ISDIR(top.st_mode):
        return
    for _, dirs, files, fd in os.fwalk(worktree, follow_symlinks=False):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if st.st_uid != top.st_uid or st.st_gid != top.st_gid:
                    os.chown(name, top.st_uid, top.st_gid, dir_fd=fd, follow_symlinks=False)

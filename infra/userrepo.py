"""The user's repository as the control plane uses it for agents: git with it as the repository
for refs and objects, and with fleetd's scratch repository (its objects the user's) for every
call that reads or writes an agent's files, so neither the user's config nor the agent's
decides what runs there. See infra/worktree.py for the design and infra/gitsafe.py for the
settings every call gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from infra import agentrepo, gitjail, gitsafe
from infra.gitjail import Call, Jail
from infra.worktree_legacy import common_dir
from schemas.errors import GitFailed, NotARepository

BRANCH_PREFIX = "fleet/"
META = ".fleet"  # <root>/.fleet/: fleetd's records of agents' repositories, no pane's folder
# What git reads of an agent's files decides nothing that runs: no filter (clean, smudge,
# process), no conversion (so a checkpoint holds the bytes on disk and a rollback writes them).
SCRATCH_ATTRIBUTES = "* -filter -text -ident -working-tree-encoding -diff -merge\n"
ALTERNATES = "GIT_ALTERNATE_OBJECT_DIRECTORIES"


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def top(repo_path: str | Path) -> Path:
    """The repository's top directory: `path` holds a `.git` directory or file (a linked
    worktree's), or is a git directory itself."""
    path = Path(
        os.path.normpath(os.path.abspath(os.path.expandvars(os.path.expanduser(repo_path))))
    )
    dot_git = path / ".git"
    try:
        if _is_git_dir(dot_git) or (
            dot_git.is_file() and dot_git.read_text().startswith("gitdir:")
        ):
            return path
        if _is_git_dir(path):
            return path.parent if path.name == ".git" else path
    except OSError as e:  # a name too long, a folder that may not be read
        raise NotARepository(str(repo_path), f"it cannot be read ({e.strerror})") from e
    raise NotARepository(str(repo_path))


def _git_dir_of(top: Path) -> Path:
    dot_git = top / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        found = Path(dot_git.read_text().removeprefix("gitdir:").strip())
        return found if found.is_absolute() else top / found
    return top  # a bare repository


def borrowed_objects(common: str | Path) -> list[str]:
    """The user's object directory and those it borrows in turn (its own alternates files,
    which only the user writes), as absolute paths."""
    found: list[str] = []
    todo = [Path(common) / "objects"]
    while todo and len(found) < 6:  # git follows alternates 5 deep
        objects = todo.pop(0)
        if str(objects) in found or not objects.is_dir():
            continue
        found.append(str(objects))
        with contextlib.suppress(OSError):
            for raw in (objects / "info" / "alternates").read_text().splitlines():
                line = raw.strip()
                if line and not line.startswith("#"):
                    more = Path(line)
                    todo.append(more if more.is_absolute() else (objects / more).resolve())
    return found


class UserRepo:
    """One user repository (`main`, its git directory `gitdir`, objects in `common`) and the
    agents' root beside it, as every git call on them is made."""

    def __init__(self, repo_path: str | Path, root: str | Path) -> None:
        self.main = top(repo_path)
        self.root = Path(root).absolute()
        self.gitdir = _git_dir_of(self.main)
        self.common = Path(common_dir(self.main) or self.gitdir)
        self.objects = str(self.common / "objects")
        key = hashlib.sha256(str(self.common).encode()).hexdigest()[:16]
        self.scratch = self.root / META / f"git-{key}"

    def git(self, action: str, *args: str, env: dict[str, str] | None = None) -> str:
        return gitsafe.run(action, self.main, ("--git-dir", str(self.gitdir), *args), env or {})

    def on(
        self,
        action: str,
        wt: Path,
        *args: str,
        env: dict[str, str],
        ok: tuple[int, ...] = (0,),
        excludes: Path | None = None,
    ) -> tuple[int, str]:
        """Git on the agent's files (`--work-tree`). Its repository is fleetd's scratch one (its
        config and attributes are fleetd's; see SCRATCH_ATTRIBUTES), its objects the user's
        (`GIT_OBJECT_DIRECTORY`): the user's config is not read where the agent's files are.
        `excludes`: a copy of the agent's info/exclude, so git ignores what the agent's own
        `git status` ignores (git never opens the agent's file)."""
        extra = ("-c", f"core.excludesFile={excludes}") if excludes is not None else ()
        full = ("--git-dir", str(self.scratch_dir()), "--work-tree", str(wt), *extra, *args)
        return gitsafe.run_status(
            action, wt, full, {"GIT_OBJECT_DIRECTORY": self.objects, **env}, ok=ok
        )

    def on_all(
        self,
        action: str,
        wt: Path,
        calls: Sequence[Call],
        *,
        jail: Jail | None,
        writes: bool = False,
        excludes: Path | None = None,
        ok: tuple[int, ...] = (0,),
    ) -> tuple[int, str]:
        """`on` for each of `calls` in turn (a call starting with "!" is a plain command), the
        last one's status and output; with an active `jail`, all in that agent's confinement
        (infra/gitjail.py), the worktree bound read-only unless the step `writes` it. Objects
        git makes there go to the jail's own folder, the user's (and, when the call's env
        names them, the agent's) borrowed read-only."""
        if jail is None or not jail.active:
            out: tuple[int, str] = (0, "")
            for i, (args, env) in enumerate(calls):
                last = ok if i == len(calls) - 1 else (0,)
                if args and args[0].startswith("!"):
                    _plain(action, wt, [args[0][1:], *args[1:]])
                    continue
                out = self.on(action, wt, *args, env=dict(env), ok=last, excludes=excludes)
            return out
        extra = ("-c", f"core.excludesFile={excludes}") if excludes is not None else ()
        repo = ("--git-dir", str(self.scratch_dir()), "--work-tree", str(wt), *extra)
        jailed: list[Call] = []
        for args, env in calls:
            if args and args[0].startswith("!"):
                jailed.append((args, env))
                continue
            borrowed = [self.objects, *filter(None, [env.get(ALTERNATES, "")])]
            mine = {**env, "GIT_OBJECT_DIRECTORY": str(jail.objects)}
            jailed.append(((*repo, *args), mine | {ALTERNATES: ":".join(borrowed)}))
        read = [str(self.scratch_dir()), *borrowed_objects(self.common), *gitjail.git_read()]
        read += [] if writes else [str(wt)]
        write = [str(wt)] if writes else []
        return jail.run(action, wt, jailed, read=read, write=write, ok=ok)

    def scratch_dir(self) -> Path:
        """fleetd's own empty repository for this user repository, made once: the repository
        of every git call that reads or writes an agent's files."""
        if (self.scratch / "info" / "attributes").is_file():
            return self.scratch
        with repo_lock(self.common):
            if not (self.scratch / "info" / "attributes").is_file():
                fmt = self.git("read the object format", "rev-parse", "--show-object-format")
                self.scratch.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                made = ("init", "-q", "--bare", "--template=", f"--object-format={fmt}")
                gitsafe.run(
                    "make fleetd's scratch repository", self.root, (*made, str(self.scratch))
                )
                (self.scratch / "info").mkdir(exist_ok=True)
                (self.scratch / "info" / "attributes").write_text(SCRATCH_ATTRIBUTES)
        return self.scratch

    def agent_env(self, wt: Path, index: Path) -> dict[str, str]:
        """The environment of a call that reads the agent's files: its objects borrowed (read
        only: new objects go to the user's), and fleetd's own index."""
        return {
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": agentrepo.objects_dir(wt, self.objects),
            "GIT_INDEX_FILE": str(index),
        }

    @staticmethod
    def excludes(wt: Path, tmp: Path) -> Path:
        path = tmp / "exclude"
        path.write_bytes(agentrepo.read(wt, "info/exclude", 1 << 20) or b"")
        return path

    @staticmethod
    def copy_agent_index(wt: Path, index: Path) -> None:
        data = agentrepo.read(wt, "index")
        index.parent.mkdir(parents=True, exist_ok=True)
        if data:
            index.write_bytes(data)

    def take_in(self, wt: Path, sha: str, made: Path | None = None) -> None:
        """Copy into the user's repository every object `sha` reaches that it lacks (only the
        agent's repository has them: its commits, files it staged; or `made`, the objects a
        jailed checkpoint wrote, infra/gitjail.py)."""
        mine = agentrepo.holds_objects(wt)
        loose = _loose(made) if made is not None else []
        if not mine and not loose:
            return  # nothing of its own: two git processes fewer at every stop
        dirs = [agentrepo.objects_dir(wt, self.objects)] if mine else []
        borrow = {ALTERNATES: ":".join([*dirs, *([str(made)] if loose else [])])}
        if mine:  # what the agent's own repository adds, beside what the jail made
            # Anything a fleet branch or this agent's saved refs reach is in the user's repo.
            listed = self.git(
                "list what the state needs", "rev-list", "--objects", sha,
                "--not", f"--glob=refs/heads/{BRANCH_PREFIX}*", f"--glob=refs/fleet/*/{wt.name}/*",
                env=borrow,
            )  # fmt: skip
            names = "".join(line[:64].split(" ")[0] + "\n" for line in listed.splitlines())
            check = ("--git-dir", str(self.gitdir), "cat-file", "--batch-check=%(objectname)")
            found = gitsafe.run("look for the objects", self.main, check, stdin=names.encode())
            missing = "".join(
                ln.split(" ")[0] + "\n" for ln in found.splitlines() if ln.endswith(" missing")
            )
        else:  # a jail writes only objects the user's repository lacks: all of them
            assert made is not None
            for name in loose:
                self.put_loose(made, name)
            return
        if missing:
            gitsafe.pipe(
                "copy the agent's objects", self.main,
                (("--git-dir", str(self.gitdir), "pack-objects", "--stdout", "-q"), borrow),
                (("--git-dir", str(self.gitdir), "unpack-objects", "-q"), {}),
                missing.encode(),
            )  # fmt: skip

    def put_loose(self, made: Path, name: str) -> None:
        """One loose object a jail made (`made/ab/cdef...`), into the user's repository, as git
        writes one: a new read-only file linked into place. Read through no link and checked:
        its inflated bytes must be a git object whose hash is its name (else GitFailed), so
        nothing but that object can land there. No git process: two fewer per checkpoint."""
        where = str(self.main)
        dst = self.common / "objects" / name[:2] / name[2:]
        if dst.exists():
            return
        try:
            fd = os.open(made / name[:2] / name[2:], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise GitFailed("take in the checkpoint's objects", where, f"{name}: {e}") from e
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        digest = hashlib.new("sha1" if len(name) == 40 else "sha256")
        inflate = zlib.decompressobj()
        head = b""
        for start in range(0, len(data), 1 << 20):
            chunk = inflate.decompress(data[start : start + (1 << 20)])
            head = head or chunk[:64]
            digest.update(chunk)
        digest.update(inflate.flush())
        kind = head.split(b" ", 1)[0]
        if digest.hexdigest() != name or kind not in (b"blob", b"tree", b"commit", b"tag"):
            raise GitFailed("take in the checkpoint's objects", where, f"{name} is not that object")
        dst.parent.mkdir(exist_ok=True)
        tmp = dst.parent / f"tmp_obj_fleet_{os.getpid()}_{name[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            with contextlib.suppress(FileExistsError):  # another writer put it there first
                os.link(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def commit_of(self, ref: str) -> str | None:
        """The sha of the commit `ref` names, or None when it names none."""
        try:
            return self.git("resolve a ref", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        except GitFailed:
            return None

    def names(self, ref: str, sha: str) -> bool:
        """Whether `ref` is a loose ref naming `sha`, read without a git process; False when
        it is not loose (packed, missing) or names another commit."""
        try:
            return (self.common / ref).read_text(errors="replace").strip() == sha
        except OSError:
            return False

    def main_head(self) -> str:
        return self.git("read HEAD", "rev-parse", "HEAD")

    def checked_out(self, branch: str) -> bool:
        """A worktree of the user's own (its main one or a linked one) has `branch` checked out."""
        want = f"ref: refs/heads/{branch}"
        heads = [self.gitdir / "HEAD", *sorted((self.common / "worktrees").glob("*/HEAD"))]
        for head in heads:
            with contextlib.suppress(OSError):
                if head.read_text().strip() == want:
                    return True
        return False


def _loose(objects: Path) -> list[str]:
    """The names of the loose objects in an object directory (`ab/cdef...` -> `abcdef...`)."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(objects):
            if len(entry.name) == 2 and entry.is_dir(follow_symlinks=False):
                names += [entry.name + rest for rest in os.listdir(entry.path)]
    return [n for n in names if agentrepo.SHA.fullmatch(n)]


def _plain(action: str, wt: Path, argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(action, str(wt), (lines or [f"exit {done.returncode}"])[-1])


@contextlib.contextmanager
def repo_lock(repo: Path) -> Iterator[None]:
    """One branch check-and-make at a time per repository on this machine (every process):
    a lock on the repository's git directory itself, so nothing is left behind (a lock file
    per repository in /tmp was, hundreds of them after a run of the suite)."""
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

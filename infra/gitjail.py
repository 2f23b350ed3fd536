"""The control plane's git on an agent's files, run inside that agent's confinement.

A checkpoint reads the agent's files and a rollback writes them; an agent may swap a folder
for a symbolic link while that happens, so git running as fleetd's user could be made to
read, or write, through the link. Here git runs as the agent itself could: through the same
launcher as its panes (infra/sandbox.py), in a bubblewrap mount namespace of its own where only
what the call needs is bound (the system read-only, fleetd's scratch repository and the user's
objects read-only, the worktree read-only for a checkpoint and read-write for a rollback, and
the jail's own folder), under Landlock with the same paths, and as the agent's own uid when
fleetd is root. Whatever a link points at, this git reaches only what the agent could reach.

The jail's folder (`work`, under the state dir, owned by the agent's uid and bound into no
pane) holds what the jailed git writes: the kept index of checkpoints, the objects a
checkpoint makes (`objects/`, taken into the user's repository afterwards by fleetd, then
emptied) and scratch files (`tmp/`, also the jail's /tmp). Several git calls of one step run
in one jail (one `sh`), so a checkpoint pays for one launcher start, not one per call.

Without bubblewrap (or namespaces) Landlock alone confines the call; without either, there is
nothing to confine with and `Jail.active` is False (git runs as before).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra import gitsafe, sandbox_argv
from schemas.errors import GitFailed

Call = tuple[Sequence[str], Mapping[str, str]]  # a command (git's args, or argv) and its env
_KEEP = ("PATH", "LANG")  # of the launcher's environment; the rest is set in the script


@dataclass(frozen=True)
class Jail:
    """Where one agent's git runs: `uid` (None: fleetd's own), with `namespaces` (bubblewrap
    works) and/or `landlock`; `system` is what every call may read (the system, Python and
    fleetd for the launcher); bubblewrap's option files go to `spill`."""

    work: Path
    uid: int | None
    namespaces: bool
    landlock: bool
    system: tuple[str, ...]
    spill: str
    as_root: bool = field(default_factory=lambda: os.geteuid() == 0)

    @property
    def active(self) -> bool:
        return self.namespaces or self.landlock

    @property
    def objects(self) -> Path:
        return self.work / "objects"

    @property
    def tmp(self) -> Path:
        return self.work / "tmp"

    def prepare(self) -> None:
        """The jail's folder with its `objects` and `tmp`, all the agent's user's."""
        for path in (self.work, self.objects, self.objects / "info", self.objects / "pack"):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._own(path)
        self.tmp.mkdir(exist_ok=True, mode=0o700)
        self._own(self.tmp)

    def _own(self, path: Path) -> None:
        if self.uid is not None and self.as_root:
            os.chown(path, self.uid, self.uid, follow_symlinks=False)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A folder of the jail's `tmp` for one step's files, removed afterwards."""
        self.prepare()
        path = Path(tempfile.mkdtemp(prefix="step-", dir=self.tmp))
        self._own(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def put(self, path: Path, data: bytes) -> None:
        """A file of the jail written by fleetd (a copy of the agent's index, its excludes),
        through no link, then given to the agent's user so its git may replace it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if self.uid is not None and self.as_root:
                os.fchown(f.fileno(), self.uid, self.uid)

    @staticmethod
    def get(path: Path) -> bytes:
        """A file the jailed git wrote, read through no link."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def clear_objects(self) -> None:
        """Drop the objects a checkpoint made here (the user's repository has them now)."""
        shutil.rmtree(self.objects, ignore_errors=True)
        self.prepare()

    def run(
        self,
        action: str,
        cwd: Path,
        calls: Sequence[Call],
        *,
        read: Sequence[str],
        write: Sequence[str],
        ok: Sequence[int] = (0,),
        timeout_s: float | None = None,
    ) -> tuple[int, str]:
        """Run `calls` one after the other in the jail, each a git (its arguments after the
        safe settings of infra/gitsafe.py) or, when it starts with "!", that argv; stop at the
        first that fails. The last one's exit status (one of `ok`) and the output of all."""
        self.prepare()
        timeout_s = gitsafe.TIMEOUT_S if timeout_s is None else timeout_s
        argv = self._argv(script(calls), cwd, [*self.system, *read], [str(self.work), *write])
        env = {k: os.environ[k] for k in _KEEP if k in os.environ}
        try:
            done = subprocess.run(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                check=False, timeout=timeout_s,
            )  # fmt: skip
        except FileNotFoundError as e:
            raise GitFailed(action, str(cwd), f"cannot run git there ({e.strerror})") from e
        except subprocess.TimeoutExpired as e:
            raise GitFailed(action, str(cwd), f"git took longer than {timeout_s:g} s") from e
        if done.returncode not in ok:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            why = (lines or [f"exit {done.returncode}"])[-1].strip("' ")
            raise GitFailed(action, str(cwd), why)
        return done.returncode, done.stdout.decode(errors="surrogateescape").removesuffix("\n")

    def _argv(self, text: str, cwd: Path, read: list[str], write: list[str]) -> list[str]:
        command = ["/bin/sh", "-c", text]
        if not self.namespaces:  # Landlock alone; as fleetd's user (see actors/agent/confine.py)
            return sandbox_argv.argv(
                command, _KEEP, read, [*write, "/dev"], self.landlock, spill=self.spill
            )
        opts = sandbox_argv.options(
            _KEEP, [*read, "/proc"], [*write, "/dev", "/tmp"], self.landlock, uid=self.uid
        )
        inner = sandbox_argv.launcher(self.spill, opts)
        kernel = ("/proc", "/sys", "/run")
        prefix = sandbox_argv.namespace_argv(
            [r for r in read if r not in kernel], write, str(self.tmp), str(cwd),
            self.as_root, self.spill, also_read=[inner[-1]],
        )  # fmt: skip
        return [*prefix, *inner, "--", *command]


def script(calls: Sequence[Call]) -> str:
    """The `sh` text of `calls`: each with its own environment (gitsafe's fixed settings
    first), each but the last ending the script when it fails."""
    lines = []
    for i, (args, env) in enumerate(calls):
        if args and args[0].startswith("!"):
            argv = [args[0][1:], *args[1:]]
        else:
            argv = gitsafe.argv(args)
        assign = [f"{k}={shlex.quote(v)}" for k, v in {**gitsafe.FIXED, **env}.items()]
        line = " ".join([*assign, *map(shlex.quote, argv)])
        lines.append(line if i == len(calls) - 1 else f"{line} || exit 125")
    return "\n".join(lines)


def git_read() -> list[str]:
    """Where the git binary is, when it is not under the system's folders already."""
    found = shutil.which("git")
    if found is None:
        return []
    return [str(Path(found).resolve().parent), os.path.dirname(found)]

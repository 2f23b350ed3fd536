"""The command line of a confined pane: bubblewrap's namespaces around the sandbox launcher
(infra/sandbox.py) and the launcher's own options.

This is the control plane's side: it writes the argv that tmux runs for a pane. The launcher
itself, which runs inside every pane and starts with the stdlib only, is infra/sandbox.py.

Bubblewrap (Debian's `bubblewrap`) gives each agent its own mount, pid and IPC namespaces: the
file system is only what is bound (the system read-only, the agent's own folders read-write,
its own /tmp and /dev/shm), /proc shows only the agent's processes, and nothing of the control
plane (its state dir, the tmux server's socket, other agents' worktrees) exists in it at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence

from infra import sandbox

# -- namespaces (bubblewrap) ------------------------------------------------------------------

SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers")


def bwrap() -> str | None:
    """The bubblewrap binary, if installed."""
    return shutil.which("bwrap")


_WORKS: list[bool] = []


def namespaces_work() -> bool:
    """Whether bubblewrap can make this agent's namespaces here (it cannot in a container
    without user namespaces, for example). Tried once per process."""
    if not _WORKS:
        _WORKS.append(_try_namespaces())
    return _WORKS[0]


def _try_namespaces() -> bool:
    binary = bwrap()
    if binary is None:
        return False
    args = [binary, *_private_args(os.geteuid() == 0), "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        return subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _private_args(as_root: bool) -> list[str]:
    out = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    out += ["--unshare-cgroup-try"]
    if not as_root:
        out += ["--unshare-user"]  # a normal user makes the namespaces inside its own
    return out


def namespace_argv(
    read: Iterable[str],
    write: Iterable[str],
    tmp: str,
    cwd: str,
    as_root: bool,
    spill: str,
    also_read: Sequence[str] = (),
) -> list[str]:
    """The bubblewrap prefix of a pane: its own namespaces, and a file system of only `read`
    (read-only) and `write` paths, `tmp` as /tmp, a private /dev (with /dev/shm) and /proc.

    Its options go to a file in the `spill` folder (`bwrap --args`), so a pane's command
    stays short: tmux refuses a command line past about 16 KB, and three windows of an agent
    with a long PATH (every entry a bind) are more. `also_read` are files bound read-only for
    the launcher itself (its own options file), which the agent's user cannot read."""
    binary = bwrap()
    if binary is None:
        raise FileNotFoundError("bwrap is not installed")
    out = [*_private_args(as_root), "--proc", "/proc", "--dev", "/dev"]
    if tmp:  # first: a granted path under /tmp is bound over it, not hidden by it
        out += ["--bind", tmp, "/tmp"]
    bound: set[str] = set()
    made: set[str] = {"/", "/tmp", "/dev", "/proc"}
    for flag, paths in (("--ro-bind", [*read, *also_read]), ("--bind", write)):
        for path in paths:
            out += _parents(path, made) + _bind(flag, path, bound)
    if any(p == "/etc" or p.startswith("/etc/") for p in bound):
        for secret in SECRET_FILES:
            if os.path.exists(secret):
                out += ["--ro-bind", "/dev/null", secret]
    options = spilled([*out, "--chdir", cwd], spill)
    # fd 3 holds the options while bubblewrap reads them (it closes it); $0 is their file.
    script = 'exec 3<"$0" && b=$1 && shift && exec "$b" --args 3 "$@"'
    return ["/bin/sh", "-c", script, options, binary]


def spilled(options: Sequence[str], folder: str) -> str:
    """`options` in a file of `folder` (NUL-separated, mode 0600), named by their hash, so
    every pane with the same options shares one and a rewrite never races a reader
    (`sandbox.read_spilled` reads them back)."""
    data = b"\0".join(o.encode() for o in options) + (b"\0" if options else b"")
    path = os.path.join(folder, hashlib.sha256(data).hexdigest()[:32])
    if not os.path.exists(path):
        part = f"{path}.{os.getpid()}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(part, path)
    return path


def _parents(path: str, made: set[str]) -> list[str]:
    """Folders above a bound path, made traversable (bubblewrap's own are mode 0700)."""
    out: list[str] = []
    parent = os.path.dirname(os.path.abspath(path))
    missing = []
    while parent not in made:
        missing.append(parent)
        made.add(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(missing):
        out += ["--perms", "0755", "--dir", folder]
    return out


def _bind(flag: str, path: str, bound: set[str]) -> list[str]:
    """Bind `path` at itself; a symlink (such as /bin -> usr/bin) is made as a symlink."""
    path = os.path.abspath(path)
    if path in bound or path in ("/dev", "/proc", "/tmp") or not os.path.lexists(path):
        return []
    bound.add(path)
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    return [f"{flag}-try", path, path]


# -- the launcher's command line --------------------------------------------------------------


def options(
    keep: Iterable[str],
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    landlock: bool = False,
    *,
    uid: int | None = None,
    connect: Iterable[int] | None = None,
    bind: Iterable[int] | None = None,
    path: str | None = None,
) -> list[str]:
    """This launcher's options for one pane (see `main`)."""
    out = ["--keep", ",".join(sorted(keep))]
    out += ["--path", path] if path is not None else []
    out += [a for p in read for a in ("--ro", str(p))]
    out += [a for p in write for a in ("--rw", str(p))]
    out += ["--uid", str(uid)] if uid is not None else []
    out += ["--connect", ",".join(map(str, sorted(set(connect))))] if connect is not None else []
    out += ["--bind", ",".join(map(str, sorted(set(bind))))] if bind is not None else []
    return [*out, *(["--landlock"] if landlock else [])]


def launcher(spill: str | None = None, opts: Sequence[str] = ()) -> list[str]:
    """The launcher's own argv before `--`: its options inline, or in a file of `spill`."""
    out = [sys.executable, "-S", os.path.abspath(sandbox.__file__)]
    if spill is None:
        return [*out, *opts]
    return [*out, "--options", spilled(opts, spill)]


def argv(
    command: Sequence[str],
    keep: Iterable[str],
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    landlock: bool = False,
    *,
    uid: int | None = None,
    connect: Iterable[int] | None = None,
    bind: Iterable[int] | None = None,
    prefix: Sequence[str] = (),
    spill: str | None = None,
    path: str | None = None,
) -> list[str]:
    """The argv that runs `command` through this launcher (after `prefix`: bubblewrap)."""
    opts = options(keep, read, write, landlock, uid=uid, connect=connect, bind=bind, path=path)
    return [*prefix, *launcher(spill, opts), "--", *command]

"""Start an agent's process with only what its template grants: environment and paths.

Run as `python -S sandbox.py [--keep NAMES] [--ro PATH]... [--rw PATH]... [--landlock] -- ARGV`
in front of every pane's command (stdlib only, so `-S` starts it fast). It

1. drops every environment variable whose name is not in `--keep` (plus what tmux itself sets
   for the pane: TERM, TMUX, TMUX_PANE, COLORTERM): tmux hands a pane its server's global
   environment, which is the control plane's and may hold secrets;
2. with `--landlock`, when the kernel has Landlock (Linux 5.13+), restricts the file system:
   `--ro` paths may be read and executed, `--rw` paths also written; everything else is out
   of reach for this process and all it starts (no_new_privs is set, as Landlock needs);
3. `exec`s ARGV, so the pane's pid stays the one tmux knows.

Landlock is used rather than bubblewrap because it needs no package, no root and no user
namespaces. Where it is missing the environment is still cleaned and the paths are not
enforced; `landlock_abi()` says which.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable, Sequence

TMUX_VARS = ("TERM", "TMUX", "TMUX_PANE", "COLORTERM")

# Syscall numbers are the same on x86_64 and aarch64 (the generic table).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1  # flag: return the ABI version instead of a ruleset
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
# Access rights (uapi/linux/landlock.h): bits 0-12 in ABI 1, REFER in 2, TRUNCATE in 3,
# IOCTL_DEV in 5.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    abi = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(abi), 0)


def _handled(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(read: Iterable[str], write: Iterable[str]) -> int:
    """Landlock this process: `read` paths readable, `write` paths writable too. The ABI used."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    libc, handled = _libc(), _handled(abi)
    attr = ctypes.c_uint64(handled)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, rights in ((read, READ | (handled & IOCTL_DEV)), (write, handled)):
            for path in paths:
                _allow(libc, ruleset, path, rights)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path that does not exist grants nothing
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def clean_env(environ: dict[str, str], keep: Iterable[str]) -> dict[str, str]:
    allowed = {*keep, *TMUX_VARS}
    return {k: v for k, v in environ.items() if k in allowed}


def argv(
    command: Sequence[str],
    keep: Iterable[str],
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    landlock: bool = False,
) -> list[str]:
    """The argv that runs `command` through this launcher."""
    out = [sys.executable, "-S", os.path.abspath(__file__), "--keep", ",".join(sorted(keep))]
    out += [a for p in read for a in ("--ro", str(p))]
    out += [a for p in write for a in ("--rw", str(p))]
    return [*out, *(["--landlock"] if landlock else []), "--", *command]


def main(args: list[str]) -> None:
    keep: list[str] = []
    read: list[str] = []
    write: list[str] = []
    landlock = False
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--landlock":
            landlock = True
            continue
        value = args.pop(0)
        if flag == "--keep":
            keep += [k for k in value.split(",") if k]
        else:
            (read if flag == "--ro" else write).append(value)
    command = args[1:]
    if not command:
        sys.exit("sandbox: nothing to run (usage: sandbox.py [options] -- argv)")
    env = clean_env(dict(os.environ), keep)
    if landlock:
        restrict(read, write)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])

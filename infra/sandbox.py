"""Start an agent's process with only what its template grants.

Run as `python -S sandbox.py [options] -- ARGV` in front of every pane's command (stdlib only,
so `-S` starts it fast), itself inside bubblewrap where namespaces are used; its argv, and
bubblewrap's around it, are written by infra/sandbox_argv.py (the control plane's side).
In order, it

1. drops every environment variable whose name is not in `--keep` (plus TERM and COLORTERM,
   which tmux sets for the pane): tmux hands a pane its server's global environment, which is
   the control plane's and may hold secrets. TMUX and TMUX_PANE go too: they name the fleet's
   tmux server, which no pane may talk to. With `--path`, PATH is that: tmux gives a new
   session's panes the PATH of the client that made it, whatever the session's own says;
2. with `--uid N` (fleetd runs as root), becomes that user and group, with no supplementary
   groups: the agent's own unprivileged user, so it holds no capability, cannot signal or
   ptrace anything of another user, cannot open other agents' terminals or read their
   `/proc/<pid>/environ`, and no setuid program gives root back (no_new_privs);
3. with `--landlock`, where the kernel has Landlock (Linux 5.13+), restricts the file system
   (`--ro` paths may be read and executed, `--rw` paths also written); with ABI 4+ and
   `--connect`/`--bind`, TCP: connecting only to the listed ports and binding only the agent's
   own; with ABI 6+, abstract unix sockets and signals outside the sandbox are out of reach;
4. `exec`s ARGV, so the pane's process is still the one tmux started (bubblewrap's, around it).

Bubblewrap (Debian's `bubblewrap`) gives each agent its own mount, pid and IPC namespaces: the
file system is only what is bound (the system read-only, the agent's own folders read-write,
its own /tmp and /dev/shm), /proc shows only the agent's processes, and nothing of the control
plane (its state dir, the tmux server's socket, other agents' worktrees) exists in it at all.
Where bubblewrap is missing or cannot make namespaces (a container without user namespaces),
Landlock alone limits the paths; `capabilities()` says what holds on this machine.
"""

from __future__ import annotations

import ctypes
import os
import sys

# Not `typing`'s: importing typing is 8 ms of the launcher's 24 (every pane and jailed git
# starts one); type checkers take any TYPE_CHECKING as true. Nor collections.abc (5 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

TMUX_VARS = ("TERM", "COLORTERM")

# Syscall numbers are the same on x86_64 and aarch64 (the generic table).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1  # flag: return the ABI version instead of a ruleset
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38
# Access rights (uapi/linux/landlock.h): bits 0-12 in ABI 1, REFER in 2, TRUNCATE in 3,
# IOCTL_DEV in 5.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


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


def restrict(
    read: Iterable[str],
    write: Iterable[str],
    connect: Iterable[int] | None = None,
    bind: Iterable[int] | None = None,
) -> int:
    """Landlock this process: `read` paths readable, `write` paths writable too; with ABI 4+,
    TCP connects only to `connect` ports and binds only `bind` ports (None: not limited); with
    ABI 6+, no abstract unix socket or signal reaches outside. The ABI used."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    libc, handled = _libc(), _handled(abi)
    net = abi >= 4 and (connect is not None or bind is not None)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 4:
        size = 16
        attr.handled_access_net = (
            (
                (NET_CONNECT_TCP if connect is not None else 0)
                | (NET_BIND_TCP if bind is not None else 0)
            )
            if net
            else 0
        )
    if abi >= 6:
        size = 24
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, rights in ((read, READ | (handled & IOCTL_DEV)), (write, handled)):
            for path in paths:
                _allow(libc, ruleset, path, rights)
        if net:
            for ports, right in ((connect, NET_CONNECT_TCP), (bind, NET_BIND_TCP)):
                for port in sorted(set(ports or ())):
                    _allow_port(libc, ruleset, port, right)
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


def _allow_port(libc: ctypes.CDLL, ruleset: int, port: int, right: int) -> None:
    rule = _NetPort(right, port)
    if libc.syscall(_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), 0) != 0:
        raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for TCP port {port}")


# -- seccomp: no typing into the terminal -------------------------------------------------------

# A classic BPF program (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k) over struct
# seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}: nr at 0, arch at 4, args[1] at 24
# (its low half on a little-endian machine; the kernel reads an ioctl's cmd as 32 bits, so the
# high half is ignored, as it must be: a caller could set it to anything).
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_ALLOW, _EPERM = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # push bytes into a terminal's input; the console's ioctl
# (audit arch, ioctl numbers) of each ABI a process may call the kernel with on this machine
_IOCTLS = {
    "x86_64": ((0xC000003E, (16, 0x40000000 | 514)), (0x40000003, (54,))),  # x86_64, x32; i386
    "aarch64": ((0xC00000B7, (29,)), (0x40000028, (54,))),  # aarch64; arm (compat)
}


def _seccomp_program(
    abis: tuple[tuple[int, tuple[int, ...]], ...],
) -> list[tuple[int, int, int, int]]:
    """ioctl(fd, TIOCSTI or TIOCLINUX, ...) fails with EPERM, in every ABI; all else is allowed."""
    prog: list[tuple[int, int, int, int]] = []
    checks: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 24),
        (_JEQ_K, 2, 0, TIOCSTI),
        (_JEQ_K, 1, 0, TIOCLINUX),
        (_RET_K, 0, 0, _ALLOW),
        (_RET_K, 0, 0, _EPERM),
    ]
    for arch, numbers in abis:
        # this ABI's block: not its arch -> skip the block; an ioctl -> the checks; else allow
        block = [(_LD_W_ABS, 0, 0, 0)]
        for i, nr in enumerate(numbers):
            block.append((_JEQ_K, len(numbers) - i, 0, nr))
        block.append((_RET_K, 0, 0, _ALLOW))
        block += checks
        prog += [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, len(block), arch), *block]
    return [*prog, (_RET_K, 0, 0, _ALLOW)]


def refuse_tiocsti() -> bool:
    """This process and all it starts: no TIOCSTI or TIOCLINUX ioctl (a seccomp filter; needs
    no_new_privs, which it sets). Whether the filter is in place (not on other machines)."""
    abis = _IOCTLS.get(os.uname().machine) if sys.platform.startswith("linux") else None
    if abis is None:
        return False
    prog = _seccomp_program(abis)

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]  # fmt: skip

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*(Filter(*row) for row in prog))
    fprog = Prog(len(prog), filters)
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return True


def become(uid: int) -> None:
    """This process and all it starts: user and group `uid`, no supplementary groups, and no
    way back (no capabilities are left once every uid is non-zero; no_new_privs)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def clean_env(environ: dict[str, str], keep: Iterable[str]) -> dict[str, str]:
    allowed = {*keep, *TMUX_VARS}
    return {k: v for k, v in environ.items() if k in allowed}


def read_spilled(path: str) -> list[str]:
    """The options `sandbox_argv.spilled` wrote to a file (NUL-separated)."""
    with open(path, "rb") as f:
        data = f.read()
    return [o.decode() for o in data.split(b"\0")[:-1]]


def _ports(value: str) -> list[int]:
    return [int(p) for p in value.split(",") if p]


def main(args: list[str]) -> None:
    keep: list[str] = []
    read: list[str] = []
    write: list[str] = []
    landlock, uid, path = False, None, None
    connect: list[int] | None = None
    bind: list[int] | None = None
    if len(args) >= 2 and args[0] == "--options":  # spilled to a file (`sandbox_argv.spilled`)
        args = [*read_spilled(args[1]), *args[2:]]
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--landlock":
            landlock = True
            continue
        value = args.pop(0)
        if flag == "--keep":
            keep += [k for k in value.split(",") if k]
        elif flag == "--uid":
            uid = int(value)
        elif flag == "--path":
            path = value
        elif flag == "--connect":
            connect = _ports(value)
        elif flag == "--bind":
            bind = _ports(value)
        else:
            (read if flag == "--ro" else write).append(value)
    command = args[1:]
    if not command:
        sys.exit("sandbox: nothing to run (usage: sandbox.py [options] -- argv)")
    env = clean_env(dict(os.environ), keep)
    if path is not None:
        env["PATH"] = path
    if landlock:  # as root still: every granted path can be opened for its rule
        restrict(read, write, connect, bind)
    if uid is not None:
        become(uid)
    refuse_tiocsti()
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])

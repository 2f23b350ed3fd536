"""What an agent's sandbox holds on this machine, tried from inside it (`fleet doctor --sandbox`).

Run by the agent's actor through the agent's own sandbox (actors/agent/confine.py, the same argv as
its panes) as `python -S sandboxprobe.py JSON`, where JSON names what the control plane knows
to be out of reach: a pid of the control plane, the tmux server's socket, the state dir, Ray's
and the gateway's TCP ports. Stdlib only. It prints one JSON list of
`{"probe", "held", "detail"}`: `held` is true when the attempt to get out failed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any


def _try(action: Callable[[], object]) -> str:
    """ "" when `action` succeeded, else the error it met."""
    try:
        action()
    except OSError as err:
        return os.strerror(err.errno) if err.errno else str(err)
    return ""


def _caps() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return line.split()[1]
    return "?"


def _connect(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass


def _unix(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(path)


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(1)


def _write_tty(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    os.close(fd)


def _sniff() -> None:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()


def _tiocsti() -> tuple[bool, str]:
    """Whether TIOCSTI (typing into a terminal) is refused: by the sandbox's seccomp filter
    (EPERM even on a file that is no terminal) or by the kernel (dev.tty.legacy_tiocsti 0)."""
    import fcntl
    import termios

    with open(os.devnull, "rb") as f:
        why = _try(functools.partial(fcntl.ioctl, f.fileno(), termios.TIOCSTI, b"x"))
    if why == os.strerror(1):
        return True, "refused by seccomp"
    legacy = "?"
    with contextlib.suppress(OSError), open("/proc/sys/dev/tty/legacy_tiocsti") as sysctl:
        legacy = sysctl.read().strip()
    return legacy == "0", f"no seccomp filter; dev.tty.legacy_tiocsti is {legacy}"


def probes(known: dict[str, Any]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def note(probe: str, held: bool, detail: str) -> None:
        out.append({"probe": probe, "held": held, "detail": detail})

    uid, caps = os.getuid(), _caps()
    note("not root", uid != 0, f"uid {uid}")
    note("no capabilities", caps.strip("0") == "", f"CapEff {caps}")
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    note("own processes only", len(pids) < 50, f"{len(pids)} processes visible in /proc")
    for pid in known.get("pids", []):
        why = _try(functools.partial(os.kill, int(pid), 0))
        note(f"cannot signal control plane pid {pid}", bool(why), why or "signal delivered")
        why = _try(functools.partial(_read, f"/proc/{pid}/environ"))
        note(f"cannot read /proc/{pid}/environ", bool(why), why or "read it")
    tmux = str(known.get("tmux_socket", ""))
    if tmux:
        why = _try(functools.partial(_unix, tmux))
        note("cannot reach the fleet's tmux server", bool(why), why or f"connected to {tmux}")
    state = str(known.get("state_dir", ""))
    if state:
        key = os.path.join(state, "fleet.key")
        why = _try(functools.partial(_read, key))
        note("cannot read the fleet key", bool(why), why or f"read {key}")
    for name, port in dict(known.get("ports", {})).items():
        why = _try(functools.partial(_connect, int(port)))
        note(f"cannot connect to {name} (port {port})", bool(why), why or "connected")
    why = _try(_sniff)
    note("cannot sniff loopback (raw packet socket)", bool(why), why or "opened AF_PACKET")
    why = _try(functools.partial(_read, "/etc/shadow"))
    note("cannot read /etc/shadow", bool(why), why or "read it")
    mine = os.ttyname(0) if os.isatty(0) else ""
    others = []
    with contextlib.suppress(OSError):
        others = [f"/dev/pts/{p}" for p in os.listdir("/dev/pts") if p.isdigit()]
    opened = [p for p in others if p != mine and not _try(functools.partial(_write_tty, p))]
    note("cannot open other terminals", not opened, ", ".join(opened) or f"{len(others)} seen")
    note("cannot type into its own terminal (TIOCSTI)", *_tiocsti())
    return out


def main(argv: list[str]) -> None:
    try:
        known = json.loads(argv[0]) if argv else {}
    except json.JSONDecodeError:
        sys.exit("sandboxprobe: the argument must be a JSON object")
    print(json.dumps(probes(known)))


if __name__ == "__main__":
    main(sys.argv[1:])

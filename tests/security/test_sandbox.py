"""From inside a real agent's pane, try to get out of its sandbox (issue 14, items 1, 5-7, 9).

Two real agents (shell template) of a real fleet: the attacker `esc` and its neighbour `nb`.
Every probe is a script typed into `esc`'s pane, as an assistant with its permission prompts
off would run it; each asserts what the attacker got, and that it got nothing of the control
plane (this test process, the tmux server, the state dir, Ray) or of the neighbour.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from nats.aio.client import Client

from infra import sandbox, sandbox_argv
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn
from tests.fleetcli import fleet_cli
from tests.security.pane import in_pane

pytestmark = pytest.mark.skipif(
    not sandbox_argv.namespaces_work(), reason="bubblewrap cannot make namespaces on this machine"
)
AS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Pair:
    esc: str  # the attacker's worktree
    nb: str  # its neighbour's worktree


@pytest.fixture
async def pair(fleet: Fleet, nc: Client, repo: Path) -> AsyncIterator[Pair]:
    worktrees = []
    for name in ("esc", "nb"):
        reply = await spawn(nc, str(repo), name, template="shell")
        assert reply.get("ok"), reply
        worktrees.append(reply["agent"]["worktree"])
    yield Pair(*worktrees)
    for name in ("esc", "nb"):
        await command(nc, name, "kill")


async def attack(nc: Client, pair: Pair, script: str) -> str:
    ran = await in_pane(nc, "esc", pair.esc, script)
    return ran.output


async def test_pane_runs_as_its_own_unprivileged_user(nc: Client, pair: Pair) -> None:
    out = await attack(nc, pair, "id -u; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status")
    lines = out.split()
    if AS_ROOT:
        assert lines[0] != "0", out  # never root
        assert int(lines[0]) > 65535, out  # a uid of the agent's own, from the fleet's range
    caps = dict(zip(lines[1::2], lines[2::2], strict=True))
    assert set(caps.values()) == {"0000000000000000"}, out  # no capability at all


async def test_no_door_to_the_fleets_tmux_server(fleet: Fleet, nc: Client, pair: Pair) -> None:
    tmpdir = os.environ["TMUX_TMPDIR"]
    server = f"{tmpdir}/tmux-{os.getuid()}/{fleet.tmux_socket}"
    assert Path(server).exists()  # the fleet's server, where the control plane reaches it
    out = await attack(
        nc, pair,
        f'echo "TMUX=$TMUX"; ls {server} && echo SEEN; '
        f"tmux -S {server} list-sessions && echo LISTED; "
        f"tmux -S {server} run-shell 'touch /tmp/pwned-by-esc' && echo RAN",
    )  # fmt: skip
    assert "TMUX=\n" in out or out.startswith("TMUX=\n"), out  # $TMUX is not handed down
    assert "SEEN" not in out and "LISTED" not in out and "RAN" not in out, out
    assert not Path("/tmp/pwned-by-esc").exists()


async def test_no_other_process_is_visible_or_reachable(nc: Client, pair: Pair) -> None:
    me = os.getpid()  # the control plane's side of this test (it holds the fleet's secrets)
    out = await attack(
        nc, pair,
        f"ls -d /proc/[0-9]* | wc -l; cat /proc/{me}/environ && echo READ; "
        f"kill -0 {me} && echo SIGNALLED; kill -STOP 1 && echo STOPPED_INIT",
    )  # fmt: skip
    count = int(out.split()[0])
    assert count < 15, out  # only the agent's own few processes (its own pid namespace)
    assert "READ" not in out and "SIGNALLED" not in out and "STOPPED_INIT" not in out, out


async def test_no_state_dir_worktree_or_terminal_of_others(
    fleet: Fleet, nc: Client, pair: Pair
) -> None:
    token = fleet.state_dir / "fleet.key"
    assert token.exists()
    (Path(pair.nb) / "neighbour-secret.txt").write_text("nb-secret\n")
    others = sorted(p for p in os.listdir("/dev/pts") if p.isdigit())
    assert others  # the fleet's panes have terminals out here
    out = await attack(
        nc, pair,
        f"cat {token} && echo KEY; ls -R {fleet.state_dir}; "
        f"cat {pair.nb}/neighbour-secret.txt && echo NEIGHBOUR; "
        f"ls /dev/pts; for p in {' '.join(others)}; do echo x > /dev/pts/$p && echo TYPED$p; done; "
        "cat /etc/shadow && echo SHADOW",
    )  # fmt: skip
    for leak in ("KEY", "NEIGHBOUR", "nb-secret", "TYPED", "SHADOW", "root:"):
        assert leak not in out, (leak, out)
    assert "fleet.key" not in out.split(), out  # not listed (named only in cat's complaint)
    # Of the state dir, only the agent's own folders exist in its sandbox (home, services).
    assert "nb" not in out.split() and "nb:" not in out, out


async def test_no_sniffing_and_no_ray_or_foreign_ports(
    fleet: Fleet, nc: Client, pair: Pair, ray_cluster: str
) -> None:
    ray_port = urlsplit(f"//{ray_cluster}").port or 6379
    with socket.create_connection(("127.0.0.1", ray_port), timeout=10):
        pass  # Ray listens there, for the control plane
    script = (
        "python3 - <<'PY'\n"
        "import socket\n"
        "try:\n"
        "    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); print('SNIFF')\n"
        "except OSError as e: print('nosniff', e.errno)\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {ray_port}), timeout=5); print('RAY')\n"
        "except OSError as e: print('noray', e.errno)\n"
        "PY"
    )
    out = await attack(nc, pair, script)
    assert "nosniff" in out and "SNIFF" not in out, out
    if sandbox.landlock_abi() >= 4:
        assert "noray" in out and "RAY" not in out.replace("noray", ""), out


async def test_no_typing_into_its_own_terminal(nc: Client, pair: Pair) -> None:
    """TIOCSTI pushes bytes into a terminal's input as if typed (here dev.tty.legacy_tiocsti
    allows it); a seccomp filter refuses it, also with the request's unused high half set."""
    script = (
        "python3 - <<'PY'\n"
        "import ctypes, fcntl, os, termios\n"
        "tty = os.open('/dev/tty', os.O_RDWR)  # the pane's terminal\n"
        "try:\n"
        "    fcntl.ioctl(tty, termios.TIOCSTI, b'#'); print('PUSHED')\n"
        "except OSError as e: print('refused', e.errno)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "c = ctypes.c_char(b'#')\n"
        "r = libc.syscall(16, tty, ctypes.c_ulong((1 << 32) | termios.TIOCSTI), ctypes.byref(c))\n"
        "print('raw', r, ctypes.get_errno())\n"
        "PY"
    )
    out = await attack(nc, pair, script)
    assert "refused 1" in out and "PUSHED" not in out, out  # EPERM
    if os.uname().machine == "x86_64":  # syscall 16 is ioctl there
        assert "raw -1 1" in out, out


async def test_shm_and_tmp_are_the_agents_own(nc: Client, pair: Pair) -> None:
    await attack(nc, pair, "echo esc > /dev/shm/esc-shm && echo esc > /tmp/esc-tmp")
    ran = await in_pane(
        nc, "nb", pair.nb, "cat /dev/shm/esc-shm /tmp/esc-tmp; ls /tmp /dev/shm; echo done"
    )
    assert "esc" not in ran.output.split(), ran.output  # neither file's content, nor its name
    assert "esc-shm" not in ran.output.split() and "esc-tmp" not in ran.output.split()
    assert not Path("/tmp/esc-tmp").exists() and not Path("/dev/shm/esc-shm").exists()


async def test_doctor_sandbox_says_what_holds(fleet: Fleet, nc: Client, pair: Pair) -> None:
    reply = await command(nc, "esc", "probe_sandbox", timeout=120)
    assert reply.get("ok"), reply
    found = {p["probe"]: p for p in reply["probes"]}
    assert found["namespaces (bubblewrap)"]["held"], found
    for probe in ("own processes only", "cannot read the fleet key", "cannot read /etc/shadow",
                  "cannot sniff loopback (raw packet socket)", "cannot open other terminals",
                  "cannot reach the fleet's tmux server",
                  "cannot type into its own terminal (TIOCSTI)"):  # fmt: skip
        assert found[probe]["held"], found[probe]
    if AS_ROOT:
        assert found["not root"]["held"] and found["no capabilities"]["held"], found
    if sandbox.landlock_abi() >= 4:
        ray = [p for name, p in found.items() if name.startswith("cannot connect to Ray")]
        assert ray and ray[0]["held"], found
    printed = await asyncio.to_thread(fleet_cli, fleet.env, "doctor", "--sandbox", "esc")
    assert "PROBE" in printed.stdout and "cannot read the fleet key" in printed.stdout, printed
    bad = await asyncio.to_thread(fleet_cli, fleet.env, "doctor", "--sandbox", "no-such-agent")
    assert bad.returncode != 0 and "no-such-agent" in (bad.stdout + bad.stderr), bad

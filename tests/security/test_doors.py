"""Doors the first audit of issue 14 did not try, tried from inside a real agent's pane.

Two real agents (shell template) of a real fleet: the attacker `esc` and its neighbour `nb`,
which was spawned with a secret in its environment. Every probe is a script typed into `esc`'s
pane (tests/security/pane.py), as an assistant with its permission prompts off would run it:

- every TCP port anything listens on (Ray's GCS, raylets and workers, this test process, other
  agents' services), on loopback and on the address it is bound to: none answers but NATS and
  the template's connect ports;
- an abstract unix socket (`@name`) the control plane listens on: no connection;
- ptrace of every process it can see (its pid 1 is bubblewrap's, run as root), and /proc of
  whatever it sees: no attach, no neighbour's secret in any environ, no other root or cwd;
- the control groups: it cannot move itself out of its own;
- git: a `.git` file naming the user's git directory, `git worktree` commands on the user's
  repository and the neighbour's folder, writing objects into the user's object store;
- and the user's object store it borrows, which also holds every object of the neighbour's
  checkpoints (docs/isolation.md, "what is left").
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from nats.aio.client import Client

from infra import sandbox, sandbox_argv
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn
from tests.security.pane import in_pane
from tests.security.test_git import git

pytestmark = pytest.mark.skipif(
    not sandbox_argv.namespaces_work(), reason="bubblewrap cannot make namespaces on this machine"
)
GRANTED_PORTS = {22, 80, 443}  # the shell template's connect ports (permissions.connect_ports)
NB_SECRET = f"nb-env-secret-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Pair:
    esc: Path  # the attacker's worktree
    nb: Path  # its neighbour's worktree


@pytest.fixture
async def pair(fleet: Fleet, nc: Client, repo: Path) -> AsyncIterator[Pair]:
    esc = await spawn(nc, str(repo), "esc", template="shell")
    nb = await spawn(nc, str(repo), "nb", template="shell", env={"NB_API_TOKEN": NB_SECRET})
    assert esc.get("ok") and nb.get("ok"), (esc, nb)
    yield Pair(Path(esc["agent"]["worktree"]), Path(nb["agent"]["worktree"]))
    for name in ("esc", "nb"):
        await command(nc, name, "kill")


async def attack(nc: Client, pair: Pair, script: str) -> str:
    return (await in_pane(nc, "esc", pair.esc, script)).output


def listening(skip: set[int]) -> list[tuple[str, int]]:
    """Every TCP (ip, port) something listens on, a wildcard as its loopback, but `skip`."""
    found: set[tuple[str, int]] = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.laddr.port in skip:
            continue
        ip = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(conn.laddr.ip, conn.laddr.ip)
        found.add((ip, conn.laddr.port))
        if conn.laddr.ip in ("0.0.0.0", "::"):
            found.add(("127.0.0.1", conn.laddr.port))
    return sorted(found)


CONNECT_ALL = """python3 - <<'PY'
import socket
for ip, port in {targets!r}:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((ip, port)); print("OPEN", ip, port)
    except OSError as e:
        print("shut", ip, port, e.errno)
    finally:
        s.close()
print("scanned")
PY"""


async def test_no_tcp_port_of_the_machine_answers_but_nats(
    fleet: Fleet, nc: Client, pair: Pair, ray_cluster: str
) -> None:
    if sandbox.landlock_abi() < 4:
        pytest.skip("TCP is limited with Landlock ABI 4+ only")
    nats_port = urlsplit(fleet.nats_url).port
    gcs = urlsplit(f"//{ray_cluster}").port
    targets = listening({*GRANTED_PORTS, nats_port or 4222})
    assert ("127.0.0.1", gcs) in targets, targets  # Ray's GCS is among them, as is this test
    nats = ("127.0.0.1", nats_port)  # granted: the scan's proof that it sees an open port
    out = await attack(nc, pair, CONNECT_ALL.format(targets=[nats, *targets]))
    assert "scanned" in out and f"OPEN 127.0.0.1 {nats_port}" in out, out
    out = out.replace(f"OPEN 127.0.0.1 {nats_port}", "")
    opened = [ln for ln in out.splitlines() if ln.startswith("OPEN")]
    assert opened == [], opened
    # Each was refused by Landlock (EACCES), not missed: a port that closed meanwhile says 111.
    refused = [ln for ln in out.splitlines() if ln.startswith("shut") and ln.endswith(" 13")]
    assert len(refused) >= len(targets) // 2, out


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, socket.socket]]:
    name = f"fleet-audit-{secrets.token_hex(6)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(4)
    server.setblocking(False)
    try:
        yield name, server
    finally:
        server.close()


async def test_no_abstract_unix_socket_of_the_control_plane_is_reachable(
    nc: Client, pair: Pair, abstract_listener: tuple[str, socket.socket]
) -> None:
    if sandbox.landlock_abi() < 6:
        pytest.skip("abstract unix sockets are scoped with Landlock ABI 6+ only")
    name, server = abstract_listener
    script = (
        "grep -c @ /proc/net/unix; python3 - <<'PY'\n"
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n"
        f"    s.connect('\\0{name}'); s.sendall(b'hello'); print('CONNECTED')\n"
        "except OSError as e: print('refused', e.errno)\n"
        "PY"
    )
    out = await attack(nc, pair, script)
    assert "refused 1" in out and "CONNECTED" not in out, out  # EPERM: Landlock's scope
    with pytest.raises(BlockingIOError):
        server.accept()  # nothing came in


PROC = """python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
me = os.getpid()
seen = []
for p in sorted(int(d) for d in os.listdir('/proc') if d.isdigit()):
    try:
        cmd = open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()[:60]
    except OSError:
        cmd = '?'
    seen.append(p)
    print('pid', p, cmd)
    try:
        env = open(f'/proc/{p}/environ', 'rb').read()
        if b'nb-env-secret' in env:
            print('SECRET in', p)
    except OSError as e:
        print('noenv', p, e.errno)
    for what in ('root', 'cwd'):
        try:
            names = os.listdir(f'/proc/{p}/{what}{NB}')
            print('OTHER', what, p, names)
        except OSError:
            pass
    try:
        uid = int(open(f'/proc/{p}/status').read().split('Uid:')[1].split()[0])
    except (OSError, IndexError):
        uid = -1
    if p == me:
        continue
    # PTRACE_SEIZE: attaches without stopping it (the pane's own shells must go on); the
    # tracer's exit lets go of whatever it got.
    if libc.ptrace(0x4206, p, 0, 0) == 0:
        print('ATTACHED' if uid != os.getuid() else 'own', p, uid)
    else:
        print('noattach', p, ctypes.get_errno())
for p in {outside}:
    if p not in seen:
        try:
            os.kill(p, 0); print('SIGNALLED', p)
        except OSError as e:
            print('nosignal', p, e.errno)
print('walked', len(seen))
PY"""


async def test_no_ptrace_and_nothing_of_others_in_proc(
    fleet: Fleet, nc: Client, pair: Pair
) -> None:
    from infra.tmux import Tmux

    nb_pane = Tmux(fleet.tmux_socket).pane_pids("fleet-nb")[0]
    inner = [c.pid for c in psutil.Process(nb_pane).children(recursive=True)]
    held = [p for p in inner if NB_SECRET.encode() in Path(f"/proc/{p}/environ").read_bytes()]
    assert held, inner  # the neighbour's shell holds its secret, seen from out here
    outside = sorted({os.getpid(), nb_pane, *inner, psutil.Process(os.getpid()).ppid()})
    script = PROC.replace("{NB}", repr(str(pair.nb))[1:-1]).replace("{outside}", repr(outside))
    out = await attack(nc, pair, script)
    assert "walked" in out, out
    for leak in ("SECRET", "OTHER", "ATTACHED", "SIGNALLED"):
        assert leak not in out, (leak, out)
    assert "noattach 1 1" in out, out  # pid 1 (bubblewrap's, root) refuses: EPERM
    assert NB_SECRET not in out, out


CGROUP = """
cat /proc/self/cgroup > cg.before
ls /sys/fs/cgroup >/dev/null 2>&1 && echo "SYS SEEN"
for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/*/tasks; do
  [ -e "$f" ] && echo $$ > "$f" 2>/dev/null && echo "MOVED $f"
done
mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null && echo MOUNTED
cat /proc/self/cgroup > cg.after; cmp -s cg.before cg.after && echo same
"""


async def test_a_pane_cannot_leave_its_control_group(nc: Client, pair: Pair) -> None:
    out = await attack(nc, pair, CGROUP)
    assert "MOVED" not in out and "MOUNTED" not in out, out
    assert "same" in out, out


GIT_BREACHES = {"WROTE", "LISTED", "ADDED", "REMOVED", "PRUNED", "READ"}
GIT = """
U={repo}; NB={nb}; M={marker}
printf '#!/bin/sh\\necho "$0" >> %s\\n' "$M" > evil.sh && chmod +x evil.sh
mkdir -p sub && echo "gitdir: $U/.git" > sub/.git
git -C sub config core.fsmonitor "$PWD/evil.sh" && echo "WROTE user config via .git file"
git -C sub config core.hooksPath "$PWD" && echo "WROTE hooksPath via .git file"
git --git-dir="$U/.git" worktree list && echo "LISTED user worktrees"
git --git-dir="$U/.git" worktree add -f "$PWD/stolen" fleet/nb && echo "ADDED user worktree"
git --git-dir="$U/.git" worktree remove --force "$NB" && echo "REMOVED nb"
git --git-dir="$U/.git" worktree prune && echo "PRUNED user worktrees"
git -C "$NB" status && echo "READ nb"
echo evil > "$NB/planted" && echo "WROTE nb"
git worktree add -q ../outside HEAD 2>/dev/null && echo "ADDED outside own folder"
echo evil | GIT_OBJECT_DIRECTORY="$U/.git/objects" git hash-object -w --stdin \\
  && echo "WROTE user object"
touch "$U/.git/objects/evil" && echo "WROTE user objects dir"
echo done
"""


async def test_git_files_and_worktree_commands_reach_nothing_of_the_user_or_neighbour(
    fleet: Fleet, nc: Client, pair: Pair, repo: Path, tmp_path: Path
) -> None:
    (pair.nb / "nb-work.txt").write_text("nb's work\n")
    config = (repo / ".git" / "config").read_text()
    worktrees = git(repo, "worktree", "list", "--porcelain")
    objects = sorted(p.name for p in (repo / ".git" / "objects").iterdir())
    marker = tmp_path / "ran.txt"
    out = await attack(nc, pair, GIT.format(repo=repo, nb=pair.nb, marker=marker))
    assert "done" in out, out
    breaches = [ln for ln in out.splitlines() if ln.split(" ")[0] in GIT_BREACHES]
    assert breaches == [], out
    assert (repo / ".git" / "config").read_text() == config
    assert git(repo, "worktree", "list", "--porcelain") == worktrees
    assert sorted(p.name for p in (repo / ".git" / "objects").iterdir()) == objects
    assert (pair.nb / "nb-work.txt").read_text() == "nb's work\n"
    assert not (pair.nb / "planted").exists() and not (pair.esc.parent / "outside").exists()
    # The control plane's git over all of it: a checkpoint and a stop of both agents.
    for name in ("esc", "nb"):
        taken = await command(nc, name, "checkpoint", label="after the attack")
        assert taken["ok"], taken
        assert (await command(nc, name, "stop"))["ok"]
    assert not marker.exists(), marker.read_text()
    assert (repo / ".git" / "config").read_text() == config


SCAN = """
git cat-file --batch-all-objects --batch-check | wc -l
git cat-file --batch-all-objects --batch 2>/dev/null | grep -a -c "{secret}" || true
echo scanned
"""


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the user's object store, which every pane borrows read-only, holds the objects of "
    "every agent's checkpoints and stopped branches (docs/isolation.md, what is left)",
)
async def test_a_neighbours_checkpoint_cannot_be_read_from_the_borrowed_objects(
    nc: Client, pair: Pair, repo: Path
) -> None:
    secret = f"nb-file-secret-{secrets.token_hex(6)}"
    (pair.nb / "notes.txt").write_text(secret + "\n")
    taken = await command(nc, "nb", "checkpoint", label="private")
    assert taken["ok"], taken
    shown = subprocess.run(
        ["git", "cat-file", "-p", f"{taken['commit']}:notes.txt"],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert secret in shown.stdout  # the control plane keeps it in the user's repository
    script = SCAN.format(secret=secret)
    out = await attack(nc, pair, script)
    assert "scanned" in out, out
    counts = out.split()
    assert counts[1] == "0", out  # no object of the attacker's repository holds nb's file

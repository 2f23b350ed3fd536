"""The control plane's git on an agent's files runs inside the agent's own confinement
(infra/gitjail.py): whatever a link in the worktree points at, a checkpoint reads and a
rollback writes only what the agent itself could.

Each attack runs from inside a real agent's pane (tests/security/pane.py): a loop that keeps
swapping a folder of the worktree for a link to the state dir (where a secret lies) while
checkpoints and a rollback run; and a `.git` file that names another agent's repository, which
git running as fleetd's user followed (the checkpoint recorded that agent's HEAD, a commit the
attacker cannot read otherwise).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from nats.aio.client import Client

from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until
from tests.security.pane import in_pane
from tests.security.test_git import git

GUARD_S = 120.0

# Swap `d` (a folder of the agent's) for a link to the state dir and back, as fast as a shell
# can, until told to stop.
SWAP = """
mkdir -p d && echo mine > d/admin.token && echo kept > d/written-by-rollback.txt
( while [ ! -e .stop ]; do
    mv -T d d.hold && ln -s {state} d && rm d && mv -T d.hold d
  done; touch .stopped ) >/dev/null 2>&1 &
echo swapping
"""


def blobs(repo: Path, commit: str) -> bytes:
    """Every file a commit holds, concatenated (links as their target's text)."""
    names = git(repo, "ls-tree", "-r", "-z", "--name-only", commit).split("\0")
    out = b""
    for name in filter(None, names):
        done = subprocess.run(
            ["git", "cat-file", "blob", f"{commit}:{name}"], cwd=repo, capture_output=True
        )
        out += done.stdout
    return out


def files_of(folder: Path) -> bytes:
    """Every regular file under `folder`, no link followed."""
    out = b""
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            path = Path(top) / name
            if path.is_file() and not path.is_symlink():
                out += path.read_bytes()
    return out


async def test_a_pane_swapping_a_folder_for_a_link_gets_nothing_through_checkpoints(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    secret = f"SECRET-{secrets.token_hex(8)}"
    token = fleet.state_dir / "admin.token"
    token.write_text(secret + "\n")
    token.chmod(0o600)
    before = set(os.listdir(fleet.state_dir))
    reply = await spawn(nc, str(repo), "sw1")
    assert reply["ok"], reply
    wt = Path(reply["agent"]["worktree"])

    ran = await in_pane(nc, "sw1", wt, SWAP.format(state=fleet.state_dir))
    assert "swapping" in ran.output, ran.output
    taken: list[str] = []
    failed: list[str] = []
    numbers: list[int] = []
    try:
        for i in range(6):
            got = await command(nc, "sw1", "checkpoint", label=f"race {i}", timeout=GUARD_S)
            (taken if got["ok"] else failed).append(got.get("commit") or str(got))
            numbers += [got["checkpoint"]] if got["ok"] else []
            if i == 2 and numbers:  # a rollback, which writes every file of d/ again
                back = await command(nc, "sw1", "rollback", checkpoint=numbers[0], timeout=GUARD_S)
                assert back["ok"] or back["error"]["code"] == "checkpoint_failed", back
    finally:
        (wt / ".stop").touch()

        async def ended() -> bool:
            return (wt / ".stopped").exists()

        await until(ended, "the pane's swapping loop to end", GUARD_S)

    assert taken, failed  # checkpoints are still made with the loop running
    for commit in taken:
        assert secret.encode() not in blobs(repo, commit), commit
    assert secret.encode() not in files_of(wt)
    assert token.read_text() == secret + "\n"  # nothing written through the link
    assert "written-by-rollback.txt" not in os.listdir(fleet.state_dir)
    assert not {n for n in set(os.listdir(fleet.state_dir)) - before if n.startswith("d")}


async def test_a_git_file_naming_another_agents_repository_is_not_followed(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    first = await spawn(nc, str(repo), "gf1")
    other = await spawn(nc, str(repo), "gf2")
    assert first["ok"] and other["ok"], (first, other)
    wt, wt2 = Path(first["agent"]["worktree"]), Path(other["agent"]["worktree"])
    (wt2 / "private.txt").write_text("gf2's own work\n")
    git(wt2, "add", "private.txt")
    git(wt2, "-c", "user.name=T", "-c", "user.email=t@x", "commit", "-qm", "private")
    hidden = git(wt2, "rev-parse", "HEAD")  # in gf2's repository only: gf1 cannot read it

    plant = f"mkdir -p sub && echo 'gitdir: {wt2}/.git' > sub/.git && echo x > sub/f && echo ok"
    ran = await in_pane(nc, "gf1", wt, plant)
    assert "ok" in ran.output, ran.output

    taken = await command(nc, "gf1", "checkpoint", label="plant", timeout=GUARD_S)
    assert taken["ok"], taken
    tree = git(repo, "ls-tree", "-r", taken["commit"])
    assert hidden not in tree, tree  # gf2's HEAD is not what gf1's checkpoint records
    assert "160000" not in tree, tree

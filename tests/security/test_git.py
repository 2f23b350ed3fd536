"""Git from inside a real agent's pane: the user's repository, other agents' branches and
fleetd's refs are out of reach; hooks, fsmonitor and filters an agent plants never run in the
control plane; an agent that wrecks its own repository loses no checkpoint; a checkpoint that
cannot be made says why, and the next one rebuilds what it needs.

Each script is typed into the agent's shell (tests/security/pane.py), as an assistant with its
permission prompts off would run it. The control plane's side (spawn, checkpoint, rollback,
stop, remove) then runs as a user would drive it, and the test looks at the user's repository.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from nats.aio.client import Client

from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn
from tests.security.pane import in_pane

BREACHES = {"PLANTED", "WROTE", "APPENDED", "MOVED", "DELETED", "REMOVED", "PRUNED"}
HOOKS = "post-checkout reference-transaction pre-commit post-commit post-index-change pre-auto-gc"


def git(where: Path, *args: str) -> str:
    # safe.directory: the agent's repository is its own user's (tests run as root)
    done = subprocess.run(
        ["git", "-c", "safe.directory=*", *args],
        cwd=where, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def refs(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ") for line in out.splitlines())


async def started(nc: Client, repo: Path, name: str) -> Path:
    reply = await spawn(nc, str(repo), name)
    assert reply["ok"], reply
    return Path(reply["agent"]["worktree"])


def attack(repo: Path, marker: Path, sha: str) -> str:
    """Everything a pane might try on the git directories it can name."""
    u = repo / ".git"
    return f"""
U={u}; A="$PWD/.git"; M={marker}
plant() {{ mkdir -p "$1" && for h in {HOOKS}; do
  printf '#!/bin/sh\\necho "$0" >> %s\\n' "$M" > "$1/$h" && chmod +x "$1/$h" || return 1; done; }}
plant "$U/hooks" && echo "PLANTED user hooks"
plant "$A/hooks" && echo "planted own hooks"
plant "$A/evil" && echo "planted own hooksPath"
tool="$A/evil/post-commit"
git --git-dir="$A" config core.hooksPath "$A/evil"
git --git-dir="$A" config core.fsmonitor "$tool"
git --git-dir="$A" config filter.evil.clean "$tool"
git --git-dir="$A" config filter.evil.smudge "$tool"
git --git-dir="$A" config filter.evil.process "$tool"
echo '* filter=evil' > .gitattributes
echo "own config:"; cat "$A/config"
git --git-dir="$U" config core.fsmonitor "$tool" && echo "WROTE user config"
printf '[core]\\n\\thooksPath = %s\\n' "$A/evil" >> "$U/config" && echo "APPENDED user config"
git --git-dir="$U" update-ref refs/heads/main {sha} && echo "MOVED main"
echo {sha} > "$U/refs/heads/main" && echo "WROTE main"
git --git-dir="$U" update-ref refs/heads/fleet/a2 {sha} && echo "MOVED a2"
git --git-dir="$U" update-ref -d refs/fleet/checkpoints/a2/1 && echo "DELETED checkpoint"
rm -r "$U/refs/fleet" && echo "REMOVED refs/fleet"
git --git-dir="$U" gc -q --prune=now && echo "PRUNED user repo"
rm -f "$U/objects/pack/"* 2>/dev/null; ls "$U/objects/pack/" >/dev/null 2>&1 || true
echo done
"""


async def test_a_pane_cannot_touch_the_users_repository_and_plants_never_run(
    fleet: Fleet, nc: Client, repo: Path, tmp_path: Path
) -> None:
    wt = await started(nc, repo, "a1")
    wt2 = await started(nc, repo, "a2")
    (wt2 / "mine.txt").write_text("a2's work\n")
    kept = await command(nc, "a2", "checkpoint", label="keep")
    assert kept["ok"], kept
    before = refs(repo)
    marker = tmp_path / "hook-ran.txt"

    ran = await in_pane(nc, "a1", wt, attack(repo, marker, kept["commit"]))

    assert "done" in ran.output, ran.output
    assert "planted own hooks" in ran.output  # its own repository is its own
    assert "fsmonitor" in (wt / ".git" / "config").read_text(), ran.output
    got_through = [ln for ln in ran.output.splitlines() if ln.split(" ")[0] in BREACHES]
    assert got_through == [], ran.output  # nothing of the user's repository could be written
    assert refs(repo) == before
    assert "hooksPath" not in (repo / ".git" / "config").read_text()

    # The control plane's git, at every step, with all of that planted.
    (wt / "work.txt").write_text("v1\n")
    first = await command(nc, "a1", "checkpoint", label="one")
    assert first["ok"], first
    assert git(repo, "show", f"{first['commit']}:work.txt") == "v1"  # no clean filter on it
    (wt / "work.txt").write_text("v2\n")
    back = await command(nc, "a1", "rollback", checkpoint=first["checkpoint"])
    assert back["ok"], back
    assert (wt / "work.txt").read_text() == "v1\n"
    stopped = await command(nc, "a1", "stop", remove_worktree=True, force=True)
    assert stopped["ok"], stopped
    assert (await spawn(nc, str(repo), "a3"))["ok"]
    assert not marker.exists(), marker.read_text()

    after = refs(repo)
    for ref in ("refs/heads/main", "refs/heads/fleet/a2", "refs/fleet/checkpoints/a2/1"):
        assert after[ref] == before[ref], ref
    (wt2 / "mine.txt").write_text("overwritten\n")
    restored = await command(nc, "a2", "rollback", checkpoint=kept["checkpoint"])
    assert restored["ok"], restored
    assert (wt2 / "mine.txt").read_text() == "a2's work\n"


WRECK = """
git --git-dir=.git gc -q --prune=now; git --git-dir=.git reflog expire --expire=now --all
rm -rf .git/objects/* .git/refs/* .git/packed-refs .git/index .git/logs
mkdir -p .git/objects/info && echo /nowhere > .git/objects/info/alternates
rm -f keep.txt && echo garbage > keep.txt
echo wrecked
"""


async def test_an_agent_that_wrecks_its_own_repository_loses_no_checkpoint(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    wt = await started(nc, repo, "w1")
    start = git(wt, "rev-parse", "HEAD")
    (wt / "keep.txt").write_text("v1\n")
    taken = await command(nc, "w1", "checkpoint", label="before")
    assert taken["ok"], taken

    ran = await in_pane(nc, "w1", wt, WRECK)
    assert "wrecked" in ran.output, ran.output

    again = await command(nc, "w1", "checkpoint", label="after")
    assert again["ok"], again  # HEAD from the user's record of the agent's branch
    assert git(repo, "show", f"{again['commit']}:keep.txt") == "garbage"
    back = await command(nc, "w1", "rollback", checkpoint=taken["checkpoint"])
    assert back["ok"], back
    assert (wt / "keep.txt").read_text() == "v1\n"
    assert git(wt, "rev-parse", "HEAD") == start  # its repository works again
    assert git(wt, "status", "--porcelain") == "?? keep.txt"


async def test_a_checkpoint_that_cannot_be_made_says_why_and_the_next_one_rebuilds(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    wt = await started(nc, repo, "c1")
    ran = await in_pane(nc, "c1", wt, "echo work > work.txt && echo ok")
    assert "ok" in ran.output, ran.output
    ran = await in_pane(nc, "c1", wt, "rm -rf .git/objects && echo x > .git/objects && echo ok")
    assert "ok" in ran.output, ran.output

    failed = await command(nc, "c1", "checkpoint", label="refused")
    assert not failed["ok"], failed
    assert failed["error"]["code"] == "checkpoint_failed"
    message = failed["error"]["message"]
    assert "cannot take checkpoint 1 of agent c1: " in message, message
    assert "objects/info/alternates: Not a directory" in message, message

    # The agent empties its repository altogether (`.git` itself may be a mount point).
    ran = await in_pane(nc, "c1", wt, "rm -rf .git/* .git/.[!.]* 2>/dev/null; ls -A .git; echo ok")
    assert "ok" in ran.output, ran.output
    made = await command(nc, "c1", "checkpoint", label="rebuilt")
    assert made["ok"], made  # the agent's repository is made again at its branch
    assert git(repo, "show", f"{made['commit']}:work.txt") == "work"
    assert git(wt, "rev-parse", "HEAD") == git(repo, "rev-parse", "fleet/c1")


COMMIT = """
git status --porcelain && echo mine > mine.txt && git add mine.txt && git commit -qm mine &&
git log --format=%an -1 && echo committed
"""


async def test_the_agent_uses_git_in_its_repository_and_its_work_comes_back(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """Needs the pane to read the user's objects (infra/agentfiles.py `paths_for_pane`)."""
    wt = await started(nc, repo, "g1")
    ran = await in_pane(nc, "g1", wt, COMMIT)
    assert "committed" in ran.output and "Test" in ran.output, ran.output
    head = git(wt, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", "fleet/g1") != head  # not yet: the user's branch is fleetd's
    assert (await command(nc, "g1", "stop"))["ok"]
    assert git(repo, "rev-parse", "fleet/g1") == head  # brought back at the stop
    assert git(repo, "show", "fleet/g1:mine.txt") == "mine"

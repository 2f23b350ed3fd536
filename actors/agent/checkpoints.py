"""Checkpoints and rollback, the actor's side: git and tmux work, each outcome an event.

A checkpoint commits the whole worktree (tracked and untracked, not ignored) through a
temporary index kept in the state dir to `refs/fleet/checkpoints/<agent>/<n>` of the user's
repository, with every object it needs copied there (infra/worktree.py), git reading the
files inside the agent's own confinement (`jail`, infra/gitjail.py): the agent's HEAD,
branch, index and files do not move, and nothing the agent does in its own repository (refs
deleted, `git gc --prune=now`) can take a checkpoint away. It saves the assistant's scrollback
to `<state_dir>/checkpoints/<agent>/<n>.txt` and records `checkpoint.taken` naming the log
sequence it stands at. A checkpoint that cannot be made raises CheckpointFailed with git's
reason, and drops the kept index, so the next one starts again from the agent's files.
A stop's checkpoint, when the folder is as the last checkpoint read it (or as fleetd checked it
out at spawn), names that same commit (or commits that checkout's tree) without any git reading
the files: infra/treestat.py tells it from lstat alone.

A rollback first checkpoints the current work (auto "rollback", so it can itself be undone by
rolling back to that one), rebuilds the state as of the checkpoint by replaying the log up to
its sequence, restores the worktree (infra.worktree.Worktrees.restore: files as saved, the
branch back where it was then, written by git in the agent's confinement as its own user),
restarts services whose configuration differs, and records `rolled_back`. The log is only
ever appended to.

Every function here runs with the actor's lock held, except `interval_loop`, which takes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors import confine, ports, services, steps
from infra import agentrepo, gitsafe, sandbox, treestat
from infra.gitjail import Jail
from infra.worktree import Worktrees
from schemas import commands as c
from schemas import events as e
from schemas.agent import AgentState, CheckpointRef
from schemas.errors import FleetError, TmuxFailed, UnknownCheckpoint
from schemas.states import Activity, Lifecycle
from schemas.templates import ServiceSpec, decode_spec

if TYPE_CHECKING:
    from actors.agent import AgentActor

log = logging.getLogger(__name__)
REF_PREFIX = "refs/fleet/checkpoints/"
L = Lifecycle


class NoWorktree(FleetError):
    code = "no_worktree"

    def __init__(self, agent_id: str, what: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"cannot {what} agent {agent_id}: it has no worktree (it was removed)")


class CheckpointFailed(FleetError):
    code = "checkpoint_failed"

    def __init__(self, agent_id: str, n: int, cause: FleetError) -> None:
        self.agent_id, self.checkpoint = agent_id, n
        super().__init__(
            f"cannot take checkpoint {n} of agent {agent_id}: {cause} (the next checkpoint "
            "starts again from the agent's files)"
        )


def ref_for(agent_id: str, n: int) -> str:
    return f"{REF_PREFIX}{agent_id}/{n}"


def next_number(state: AgentState) -> int:
    return max((cp.checkpoint for cp in state.checkpoints), default=0) + 1


def find(state: AgentState, n: int) -> CheckpointRef:
    for cp in state.checkpoints:
        if cp.checkpoint == n:
            return cp
    raise UnknownCheckpoint(state.agent_id, n)


def _folder(actor: AgentActor) -> Path:
    return Path(actor.config.state_dir) / "checkpoints" / actor.state.agent_id


def jail(actor: AgentActor) -> Jail:
    """Where git on this agent's files runs (infra/gitjail.py): its own uid, its namespaces
    and Landlock, as its panes get them (actors/confine.py); its folder beside the
    checkpoints' scrollback, in no pane's reach."""
    system = [p for p in confine.SYSTEM_READ if os.path.lexists(p)]
    system += [sys.prefix, sys.base_prefix, confine.FLEETD_ROOT]
    return Jail(
        work=_folder(actor) / "git",
        uid=actor.sandbox_uid,
        namespaces=confine.namespaces(actor),
        landlock=actor.config.confine_paths and sandbox.landlock_abi() > 0,
        system=tuple(dict.fromkeys(system)),
        spill=str(confine.private_dir(actor, "sandbox")),
    )


def worktrees(actor: AgentActor, where: Jail | None = None) -> Worktrees:
    """The agent's repository as checkpoints, rollbacks and removals use it: jailed."""
    return Worktrees(actor.state.repo, actor.config.worktree_root, where or jail(actor))


def _index(actor: AgentActor, where: Jail) -> Path:
    """The index checkpoints keep: the jail's when there is one (the old one is dropped)."""
    old = _folder(actor) / "index"
    if not where.active:
        return old
    old.unlink(missing_ok=True)
    return where.work / "index"


def _scrollback_path(actor: AgentActor, n: int) -> Path:
    return _folder(actor) / f"{n}.txt"


def _save_scrollback(actor: AgentActor, n: int) -> str:
    """The agent window's whole history into a file; "" when there is no session to read."""
    session = actor.state.tmux_session
    if not session:
        return ""
    try:
        text = actor.tmux.capture(session, "agent", None, True)
    except TmuxFailed:  # the session is gone (a stop after the assistant exited): no scrollback
        return ""
    path = _scrollback_path(actor, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return str(path)


async def take(
    actor: AgentActor, *, label: str = "", auto: str = "", cause: str = "", by: str = ""
) -> int:
    """Commit the worktree, save the scrollback, record `checkpoint.taken`; its number."""
    s = actor.state
    if not s.worktree or not Path(s.worktree).is_dir():
        raise NoWorktree(s.agent_id, "checkpoint")
    n = next_number(s)
    ref = ref_for(s.agent_id, n)
    log_seq = actor.position.seq  # the last event before this checkpoint
    where = jail(actor)
    trees = worktrees(actor, where)
    index = _index(actor, where)  # kept: the next checkpoint re-hashes only what changed
    # The scrollback is read while git saves: neither waits for the other (a stop waits for both).
    reading = asyncio.ensure_future(steps.run(_save_scrollback, actor, n))
    try:
        commit = await steps.run(_save, actor, trees, Path(s.worktree), ref, index, auto == "stop")
    except BaseException as err:
        await asyncio.gather(reading, return_exceptions=True)
        _scrollback_path(actor, n).unlink(missing_ok=True)  # no checkpoint: no scrollback of it
        index.unlink(missing_ok=True)  # whatever it names, the next one does not lean on it
        if isinstance(err, FleetError):
            raise CheckpointFailed(s.agent_id, n, err) from err
        raise
    scrollback = await reading
    meta = steps._meta(actor, cause) | ({"actor": by} if by else {})
    taken = e.CheckpointTaken(
        checkpoint=n,
        log_seq=log_seq,
        commit=commit,
        ref=ref,
        label=label,
        auto=auto,
        scrollback=scrollback,
        **meta,
    )
    await actor.record([taken])
    return n


def _save(actor: AgentActor, trees: Worktrees, wt: Path, ref: str, index: Path, reuse: bool) -> str:
    """The checkpoint's commit, stored at `ref`. With `reuse` (a stop), when the folder is as
    the last checkpoint (or fleetd's checkout at spawn) left it (infra/treestat.py), that
    commit again, and no git reads the files; otherwise a save, its fingerprint taken first (a
    write after it, before or after git reads, makes the next one differ)."""
    before = treestat.walk(wt)
    known = actor.known_files
    actor.known_files = None  # until this checkpoint is stored
    if reuse and known is not None:
        now = before or treestat.walk(wt, quiet_s=0)
        if now is not None and now.digest == known.digest:
            commit = known.commit or _commit_checkout(trees, wt, known.head)
            trees.repo.git("store the state", "update-ref", ref, commit)
            actor.known_files = treestat.Known(known.digest, commit)
            return commit
    commit = trees.save_to_ref(wt, ref, index)
    if before is not None:
        actor.known_files = treestat.Known(before.digest, commit)
    return commit


def _commit_checkout(trees: Worktrees, wt: Path, head: str) -> str:
    """What a save of fleetd's own checkout of `head` commits: its tree, parent `head` (no git
    reads the agent's files: the user's repository has both)."""
    who = gitsafe.identity(gitsafe.ask_identity(trees.main))
    message = f"fleet: saved state of {wt.name}"
    tree = f"{head}^{{tree}}"
    return trees.repo.git(
        "commit the state", "commit-tree", tree, "-p", head, "-m", message, env=who
    )


def as_checked_out(actor: AgentActor, wt: Path, head: str) -> treestat.Known | None:
    """At spawn, once fleetd has written the new folder and before any pane starts: its
    fingerprint, standing for `head`'s tree, when its files are exactly the paths its index
    names (the ports' `.env` aside, when it is excluded), else None. Nothing of the agent runs
    yet, so nothing races the walk; a pane starts tens of milliseconds later, past any
    timestamp's tick, so its first write shows."""
    found = treestat.walk(wt, quiet_s=0)
    names = treestat.index_paths(agentrepo.read(wt, "index") or b"", len(head) // 2)
    if found is None or names is None or ports.DOTENV in names:  # a tracked .env it rewrote
        return None
    exclude = (agentrepo.read(wt, "info/exclude", 1 << 20) or b"").decode(errors="replace")
    aside = {ports.DOTENV} if f"/{ports.DOTENV}" in exclude.splitlines() else set()
    if found.files - aside != names:
        return None
    return treestat.Known(found.digest, "", head)


async def take_auto(actor: AgentActor, auto: str, label: str = "", cause: str = "") -> int | None:
    """An automatic checkpoint that must never stand in the way of what triggered it (a stop,
    an unhealthy service): a failure is logged, and None returned."""
    try:
        return await take(actor, label=label, auto=auto, cause=cause)
    except NoWorktree:
        return None
    except Exception:
        log.exception("agent %s: automatic checkpoint (%s) failed", actor.state.agent_id, auto)
        return None


async def checkpoint(actor: AgentActor, cmd: c.Checkpoint) -> dict[str, Any]:
    """The `checkpoint` command: decide (lifecycle allows it), then take it."""
    await actor.execute(cmd)
    n = await take(actor, label=cmd.label, auto=cmd.auto, cause=cmd.id, by=cmd.by)
    return {"checkpoint": n, "commit": find(actor.state, n).commit}


async def rollback(actor: AgentActor, cmd: c.Rollback) -> dict[str, Any]:
    """The `rollback` command; see the module docstring for the steps."""
    await actor.execute(cmd)  # refuses an unknown checkpoint or a lifecycle that forbids it
    s = actor.state
    target = find(s, cmd.checkpoint)
    if not s.worktree or not Path(s.worktree).is_dir():
        raise NoWorktree(s.agent_id, "roll back")
    label = f"before rollback to #{target.checkpoint}"
    saved = await take(actor, label=label, auto="rollback", cause=cmd.id)
    replayed = await actor.store.replay(s.agent_id, upto=target.log_seq)
    where = jail(actor)
    trees = worktrees(actor, where)
    index = _index(actor, where)  # as the checkpoint just taken left it
    actor.known_files = None  # the files change now
    await steps.run(trees.restore, s.worktree, target.commit, index)
    restarted = await restart_changed_services(actor, replayed.state, cmd.id)
    meta = steps._meta(actor, cmd.id) | ({"actor": cmd.by} if cmd.by else {})
    done = e.RolledBack(
        checkpoint=target.checkpoint,
        to_seq=target.log_seq,
        commit=target.commit,
        saved_checkpoint=saved,
        **meta,
    )
    await actor.record([done])
    return {
        "checkpoint": target.checkpoint,
        "saved_checkpoint": saved,
        "commit": target.commit,
        "restarted": restarted,
    }


def changed_services(current: AgentState, replayed: AgentState) -> list[str]:
    """Services whose configuration (their spec in the recorded template) differs between the
    state as of the checkpoint and now. Today an agent's template is fixed when it is created,
    so this is empty unless a later event changes it; the hook is here for when one does."""
    now, then = _specs(current), _specs(replayed)
    return sorted(name for name in now.keys() & then.keys() if now[name] != then[name])


def _specs(state: AgentState) -> dict[str, ServiceSpec]:
    template = decode_spec(state.template_spec)
    return dict(template.services) if template is not None else {}


async def restart_changed_services(
    actor: AgentActor, replayed: AgentState, cause: str
) -> list[str]:
    """Restart the running services whose configuration differs from the checkpoint's."""
    if actor.state.lifecycle is not L.RUNNING:
        return []
    names = [n for n in changed_services(actor.state, replayed) if n in actor.state.services]
    for name in names:
        await services.restart(actor, name, cause)
    return names


# -- every N minutes of WORKING ---------------------------------------------------------------


def start_interval(actor: AgentActor) -> asyncio.Task[None] | None:
    """The interval checkpoint task, when the agent's config asks for one."""
    every_s = actor.config.checkpoint_every_min * 60.0
    if every_s <= 0:
        return None
    return asyncio.get_running_loop().create_task(interval_loop(actor, every_s))


async def interval_loop(actor: AgentActor, every_s: float) -> None:
    """Count the time the agent is seen WORKING; checkpoint after each `every_s` of it."""
    tick = min(5.0, every_s / 10)
    worked, last = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        s = actor.state
        if s.lifecycle is L.RUNNING and s.activity is Activity.WORKING:
            worked += now - last
        last = now
        if worked < every_s:
            continue
        worked = 0.0
        async with actor.lock.step("taking an interval checkpoint"):
            if actor.state.lifecycle is L.RUNNING:
                minutes = f"{every_s / 60:g}"
                await take_auto(actor, "interval", f"after {minutes} min of work")

"""Checkpoints, the actor's side: git and tmux work, each outcome an event.

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

A rollback (rollback.py) restores one of them.

Every function here runs with the actor's lock held, except `interval_loop`, which takes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from actors.agent.confine import FLEETD_ROOT, SYSTEM_READ, namespaces, private_dir
from actors.agent.context import AgentContext
from actors.agent.portlease import DOTENV
from infra import agentrepo, gitsafe, sandbox, treestat
from infra.gitjail import Jail
from infra.worktree import Worktrees
from schemas import commands as c
from schemas import events as e
from schemas.agent import AgentState, CheckpointRef
from schemas.errors import FleetError, TmuxFailed, UnknownCheckpoint
from schemas.states import Activity, Lifecycle

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


def _folder(ctx: AgentContext) -> Path:
    return Path(ctx.config.state_dir) / "checkpoints" / ctx.state.agent_id


def jail(ctx: AgentContext) -> Jail:
    """Where git on this agent's files runs (infra/gitjail.py): its own uid, its namespaces
    and Landlock, as its panes get them (confine.py); its folder beside the
    checkpoints' scrollback, in no pane's reach."""
    system = [p for p in SYSTEM_READ if os.path.lexists(p)]
    system += [sys.prefix, sys.base_prefix, FLEETD_ROOT]
    return Jail(
        work=_folder(ctx) / "git",
        uid=ctx.sandbox_uid,
        namespaces=namespaces(ctx),
        landlock=ctx.config.confine_paths and sandbox.landlock_abi() > 0,
        system=tuple(dict.fromkeys(system)),
        spill=str(private_dir(ctx, "sandbox")),
    )


def jailed_worktrees(ctx: AgentContext, where: Jail | None = None) -> Worktrees:
    """The agent's repository as checkpoints, rollbacks and removals use it: jailed."""
    return Worktrees(ctx.state.repo, ctx.config.worktree_root, where or jail(ctx))


def kept_index(ctx: AgentContext, where: Jail) -> Path:
    """The index checkpoints keep: the jail's when there is one (the old one is dropped)."""
    old = _folder(ctx) / "index"
    if not where.active:
        return old
    old.unlink(missing_ok=True)
    return where.work / "index"


def _scrollback_path(ctx: AgentContext, n: int) -> Path:
    return _folder(ctx) / f"{n}.txt"


def _save_scrollback(ctx: AgentContext, n: int) -> str:
    """The agent window's whole history into a file; "" when there is no session to read."""
    session = ctx.state.tmux_session
    if not session:
        return ""
    try:
        text = ctx.tmux.capture(session, "agent", None, True)
    except TmuxFailed:  # the session is gone (a stop after the assistant exited): no scrollback
        return ""
    path = _scrollback_path(ctx, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return str(path)


async def take(
    ctx: AgentContext, *, label: str = "", auto: str = "", cause: str = "", by: str = ""
) -> int:
    """Commit the worktree, save the scrollback, record `checkpoint.taken`; its number."""
    s = ctx.state
    if not s.worktree or not Path(s.worktree).is_dir():
        raise NoWorktree(s.agent_id, "checkpoint")
    n = next_number(s)
    ref = ref_for(s.agent_id, n)
    log_seq = ctx.position.seq  # the last event before this checkpoint
    where = jail(ctx)
    trees = jailed_worktrees(ctx, where)
    index = kept_index(ctx, where)  # kept: the next checkpoint re-hashes only what changed
    # The scrollback is read while git saves: neither waits for the other (a stop waits for both).
    reading = asyncio.ensure_future(asyncio.to_thread(_save_scrollback, ctx, n))
    try:
        commit = await asyncio.to_thread(
            _save, ctx, trees, Path(s.worktree), ref, index, auto == "stop"
        )
    except BaseException as err:
        await asyncio.gather(reading, return_exceptions=True)
        _scrollback_path(ctx, n).unlink(missing_ok=True)  # no checkpoint: no scrollback of it
        index.unlink(missing_ok=True)  # whatever it names, the next one does not lean on it
        if isinstance(err, FleetError):
            raise CheckpointFailed(s.agent_id, n, err) from err
        raise
    scrollback = await reading
    meta = ctx.meta(cause) | ({"actor": by} if by else {})
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
    await ctx.record([taken])
    return n


def _save(ctx: AgentContext, trees: Worktrees, wt: Path, ref: str, index: Path, reuse: bool) -> str:
    """The checkpoint's commit, stored at `ref`. With `reuse` (a stop), when the folder is as
    the last checkpoint (or fleetd's checkout at spawn) left it (infra/treestat.py), that
    commit again, and no git reads the files; otherwise a save, its fingerprint taken first (a
    write after it, before or after git reads, makes the next one differ)."""
    before = treestat.walk(wt)
    known = ctx.known_files
    ctx.known_files = None  # until this checkpoint is stored
    if reuse and known is not None:
        now = before or treestat.walk(wt, quiet_s=0)
        if now is not None and now.digest == known.digest:
            commit = known.commit or _commit_checkout(trees, wt, known.head)
            trees.repo.git("store the state", "update-ref", ref, commit)
            ctx.known_files = treestat.Known(known.digest, commit)
            return commit
    commit = trees.save_to_ref(wt, ref, index)
    if before is not None:
        ctx.known_files = treestat.Known(before.digest, commit)
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


def as_checked_out(ctx: AgentContext, wt: Path, head: str) -> treestat.Known | None:
    """At spawn, once fleetd has written the new folder and before any pane starts: its
    fingerprint, standing for `head`'s tree, when its files are exactly the paths its index
    names (the ports' `.env` aside, when it is excluded), else None. Nothing of the agent runs
    yet, so nothing races the walk; a pane starts tens of milliseconds later, past any
    timestamp's tick, so its first write shows."""
    found = treestat.walk(wt, quiet_s=0)
    names = treestat.index_paths(agentrepo.read(wt, "index") or b"", len(head) // 2)
    if found is None or names is None or DOTENV in names:  # a tracked .env it rewrote
        return None
    exclude = (agentrepo.read(wt, "info/exclude", 1 << 20) or b"").decode(errors="replace")
    aside = {DOTENV} if f"/{DOTENV}" in exclude.splitlines() else set()
    if found.files - aside != names:
        return None
    return treestat.Known(found.digest, "", head)


async def take_auto(ctx: AgentContext, auto: str, label: str = "", cause: str = "") -> int | None:
    """An automatic checkpoint that must never stand in the way of what triggered it (a stop,
    an unhealthy service): a failure is logged, and None returned."""
    try:
        return await take(ctx, label=label, auto=auto, cause=cause)
    except NoWorktree:
        return None
    except Exception:
        log.exception("agent %s: automatic checkpoint (%s) failed", ctx.state.agent_id, auto)
        return None


async def checkpoint(ctx: AgentContext, cmd: c.Checkpoint) -> dict[str, Any]:
    """The `checkpoint` command: decide (lifecycle allows it), then take it."""
    await ctx.execute(cmd)
    n = await take(ctx, label=cmd.label, auto=cmd.auto, cause=cmd.id, by=cmd.by)
    return {"checkpoint": n, "commit": find(ctx.state, n).commit}


# -- every N minutes of WORKING ---------------------------------------------------------------


def start_interval(ctx: AgentContext) -> asyncio.Task[None] | None:
    """The interval checkpoint task, when the agent's config asks for one."""
    every_s = ctx.config.checkpoint_every_min * 60.0
    if every_s <= 0:
        return None
    return asyncio.get_running_loop().create_task(interval_loop(ctx, every_s))


async def interval_loop(ctx: AgentContext, every_s: float) -> None:
    """Count the time the agent is seen WORKING; checkpoint after each `every_s` of it."""
    tick = min(5.0, every_s / 10)
    worked, last = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        s = ctx.state
        if s.lifecycle is L.RUNNING and s.activity is Activity.WORKING:
            worked += now - last
        last = now
        if worked < every_s:
            continue
        worked = 0.0
        async with ctx.lock.step("taking an interval checkpoint"):
            if ctx.state.lifecycle is L.RUNNING:
                minutes = f"{every_s / 60:g}"
                await take_auto(ctx, "interval", f"after {minutes} min of work")

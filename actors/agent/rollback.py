"""Rollback, the actor's side: back to a checkpoint (checkpoints.py), itself undoable.

A rollback first checkpoints the current work (auto "rollback", so it can itself be undone by
rolling back to that one), rebuilds the state as of the checkpoint by replaying the log up to
its sequence, restores the worktree (infra.worktree.Worktrees.restore: files as saved, the
branch back where it was then, written by git in the agent's confinement as its own user),
restarts services whose configuration differs, and records `rolled_back`. The log is only
ever appended to. It runs with the actor's lock held.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from actors.agent.checkpoints import NoWorktree, find, jail, jailed_worktrees, kept_index, take
from actors.agent.context import AgentContext
from actors.agent.devservices import restart_service
from schemas import commands as c
from schemas import events as e
from schemas.agent import AgentState
from schemas.states import Lifecycle
from schemas.templates import ServiceSpec, decode_spec

L = Lifecycle


async def rollback(ctx: AgentContext, cmd: c.Rollback) -> dict[str, Any]:
    """The `rollback` command; see the module docstring for the steps."""
    await ctx.execute(cmd)  # refuses an unknown checkpoint or a lifecycle that forbids it
    s = ctx.state
    target = find(s, cmd.checkpoint)
    if not s.worktree or not Path(s.worktree).is_dir():
        raise NoWorktree(s.agent_id, "roll back")
    label = f"before rollback to #{target.checkpoint}"
    saved = await take(ctx, label=label, auto="rollback", cause=cmd.id)
    replayed = await ctx.store.replay(s.agent_id, upto=target.log_seq)
    where = jail(ctx)
    trees = jailed_worktrees(ctx, where)
    index = kept_index(ctx, where)  # as the checkpoint just taken left it
    ctx.known_files = None  # the files change now
    await asyncio.to_thread(trees.restore, s.worktree, target.commit, index)
    restarted = await restart_changed_services(ctx, replayed.state, cmd.id)
    meta = ctx.meta(cmd.id) | ({"actor": cmd.by} if cmd.by else {})
    done = e.RolledBack(
        checkpoint=target.checkpoint,
        to_seq=target.log_seq,
        commit=target.commit,
        saved_checkpoint=saved,
        **meta,
    )
    await ctx.record([done])
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
    ctx: AgentContext, replayed: AgentState, cause: str
) -> list[str]:
    """Restart the running services whose configuration differs from the checkpoint's."""
    if ctx.state.lifecycle is not L.RUNNING:
        return []
    names = [n for n in changed_services(ctx.state, replayed) if n in ctx.state.services]
    for name in names:
        await restart_service(ctx, name, cause)
    return names

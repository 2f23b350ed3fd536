"""Which step carries out which writing command: one `match` from verb to step.

`act` runs with the agent's lock held (actor.py takes it, within the sender's patience): it
decides and records the command (`AgentContext.execute`), then does what the new facts ask,
through the steps (steps.py) and the helpers beside them. What it returns is added to the
reply.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from actors.agent.checkpoints import checkpoint, take_auto
from actors.agent.confine import release_user
from actors.agent.context import AgentContext
from actors.agent.creds import revoke_nats_user
from actors.agent.devservices import restart_service
from actors.agent.keyboard import enter_text
from actors.agent.monitor import refuse_dead_pane
from actors.agent.recovery import new_ports
from actors.agent.rollback import rollback
from actors.agent.steps import (
    bring_up,
    recreate_session,
    refuse_if_work,
    remove_worktree_of,
    stop,
)
from infra import secretstore
from schemas import commands as c
from schemas.profiles import agent_profile
from schemas.states import Lifecycle

L = Lifecycle


async def act(ctx: AgentContext, cmd: c.AgentCommand) -> dict[str, Any]:
    """Decide, record and carry out one writing command; return extra reply fields."""
    tmux, s = ctx.tmux, ctx.state
    match cmd:
        case c.Pause() | c.Resume():
            await ctx.execute(cmd)
            sig = signal.SIGSTOP if isinstance(cmd, c.Pause) else signal.SIGCONT
            await asyncio.to_thread(tmux.signal_panes, s.tmux_session, sig)
        case c.Stop(remove_worktree=remove, force=force):
            if remove:
                await refuse_if_work(ctx, force)
            if await ctx.execute(cmd):
                await stop(ctx, polite=True, remove_worktree=remove, force=force)
            elif remove and ctx.state.lifecycle is L.STOPPED and ctx.state.worktree:
                await remove_worktree_of(ctx, force)
        case c.Kill():
            if await ctx.execute(cmd):
                await stop(ctx, polite=False)
        case c.Restart():
            await ctx.execute(cmd)
            if ctx.state.lifecycle is L.STOPPING:
                await stop(ctx, polite=True)
                await ctx.execute(cmd)
            await bring_up(ctx)
        case c.Send(text=text, keys=keys, enter=enter):
            await refuse_dead_pane(ctx)  # nothing typed into, or logged for, a dead pane
            await ctx.execute(cmd)
            if text:  # pasted, then Enter once it is taken (keyboard.py)
                profile = agent_profile(s)
                await enter_text(
                    tmux, s.tmux_session, "agent", profile, text, enter=enter and not keys
                )
            if keys:
                await asyncio.to_thread(tmux.send_keys, s.tmux_session, "agent", list(keys))
        case c.Attach(user=user, readonly=readonly):
            await ctx.execute(cmd)
            grouped = await asyncio.to_thread(tmux.grouped_session, s.tmux_session, user)
            argv = tmux.attach_argv(grouped) + (["-r"] if readonly else [])
            return {"session": grouped, "argv": argv}
        case c.Detach(user=user):
            if await ctx.execute(cmd):
                await asyncio.to_thread(tmux.end_user_session, s.tmux_session, user)
        case c.RecreateSession():
            await recreate_session(ctx, cmd)
        case c.NewPorts():
            await new_ports(ctx, cmd)
        case c.RestartService(service=name):
            await ctx.execute(cmd)
            await restart_service(ctx, name, cmd.id)
        case c.Remove(force=force):
            await _remove(ctx, cmd, force)
        case c.Checkpoint():
            return await checkpoint(ctx, cmd)
        case c.Rollback():
            return await rollback(ctx, cmd)
        case c.ReportHealth(healthy=False, service=name):
            if await ctx.execute(cmd):  # the service just turned unhealthy
                await take_auto(ctx, "unhealthy", f"{name} unhealthy", cmd.id)
        case _:
            await ctx.execute(cmd)
    return {}


async def _remove(ctx: AgentContext, cmd: c.Remove, force: bool) -> None:
    s = ctx.state  # as it was before the removal was recorded
    await refuse_if_work(ctx, force)
    await ctx.execute(cmd)
    await revoke_nats_user(ctx)  # an agent removed from ERROR may still hold its user
    if s.worktree and Path(s.worktree).is_dir():
        await remove_worktree_of(ctx, True)
    await secretstore.delete(ctx.nc, s.agent_id)
    await release_user(ctx)

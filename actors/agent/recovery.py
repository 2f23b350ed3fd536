"""The agent's side of recovery: its session made anew, new ports, and an old worktree moved.

`remake` and `new_ports` carry out rungs of the ladder that the health service sends
(schemas.recovery; `recreate_session` itself is in steps.py, since an agent in ERROR is
brought up again instead); each runs with the actor's lock held, like every step, and records
what it changes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from actors.agent.context import AgentContext
from actors.agent.devservices import start_services, stop_services
from actors.agent.limitwatch import apply_limits
from actors.agent.portlease import lease_ports, release_ports
from actors.agent.session import WINDOWS, create, session_name
from actors.agent.watchers import start_watching
from schemas import commands as c
from schemas import events as e
from schemas.errors import FleetError
from schemas.states import Lifecycle

log = logging.getLogger(__name__)

L = Lifecycle


async def remake(ctx: AgentContext, cause: str) -> None:
    """The session killed (every process in it) and made anew, its services started again."""
    ctx.stop_watching()
    await stop_services(ctx, polite=False, cause=cause)
    s = ctx.state
    live = bool(s.tmux_session) and await asyncio.to_thread(ctx.tmux.has_session, s.tmux_session)
    if live:
        await asyncio.to_thread(ctx.tmux.kill_session, s.tmux_session)
    closed = e.SessionClosed(
        socket=ctx.tmux.socket_name,
        session=s.tmux_session or session_name(s.agent_id),
        reason="recreate_session",
        **ctx.meta(cause),
    )
    await ctx.record([closed])
    try:
        await _new_session(ctx, cause)
        await start_services(ctx)
    except FleetError as err:
        await ctx.fail(f"recreating the session failed: {err}")
        raise
    start_watching(ctx)


async def _new_session(ctx: AgentContext, cause: str) -> None:
    """The session as `bring_up` makes it, in the worktree the agent already has."""
    await open_session(ctx, Path(ctx.state.worktree), replace=False, cause=cause)


async def open_session(ctx: AgentContext, path: Path, *, replace: bool, cause: str = "") -> None:
    """Create the agent's session in `path`, record `session.started`, and put the template's
    resources on its panes (a spawn, a remake and a recreate_session all start one so)."""
    session = session_name(ctx.state.agent_id)
    recordings = await asyncio.to_thread(create, ctx, session, path, replace=replace)
    started = e.SessionStarted(
        socket=ctx.tmux.socket_name,
        session=session,
        windows=WINDOWS,
        recording=str(recordings["agent"]),
        **ctx.meta(cause),
    )
    await ctx.record([started])
    await apply_limits(ctx)


async def new_ports(ctx: AgentContext, cmd: c.NewPorts) -> None:
    """Stop the services, give every lease back, lease again, start the services on the new ports.

    A port something else grabbed (the usual reason a service cannot bind) is then no longer
    the agent's: the ports service checks each new lease with a real bind.
    """
    await ctx.execute(cmd)
    if ctx.state.lifecycle is not L.RUNNING:
        return
    await stop_services(ctx, polite=True, cause=cmd.id)
    await release_ports(ctx)
    await lease_ports(ctx, Path(ctx.state.worktree))
    await start_services(ctx)


# -- agents made before each had a repository of its own ---------------------------------------


async def migrate_legacy(ctx: AgentContext, adopting: bool = True) -> bool:
    """When the actor starts (`adopting` its panes) and before a restart makes panes: an
    agent whose worktree is still a linked worktree of the user's repository (made before
    agents had repositories of their own, infra/worktree.py) gets a repository of its own, so
    its panes lose write access to the user's git directory. Panes that outlived the actor
    were started with that access: a RUNNING agent's session is made again at once (its
    assistant restarts in the same worktree); a PAUSED one's too, and its new panes are
    stopped again, so it stays PAUSED. Whether it was migrated; one that cannot be is logged
    with its reason and the agent goes on as it was."""
    s = ctx.state
    if not s.worktree or not s.repo or not Path(s.worktree).is_dir():
        return False
    try:
        moved = await asyncio.to_thread(ctx.worktrees().migrate, s.agent_id)
    except FleetError as err:
        log.warning("agent %s keeps its linked worktree (and write access to the user's .git)"
                    " until it is removed and spawned again: %s", s.agent_id, err)  # fmt: skip
        return False
    if not moved:
        return False
    log.warning("agent %s: its linked worktree is now a repository of its own", s.agent_id)
    if not adopting:  # the panes about to be made get the new grants
        return True
    live = bool(s.tmux_session) and await asyncio.to_thread(ctx.tmux.has_session, s.tmux_session)
    if not live:
        return True
    if s.lifecycle is L.RUNNING:
        async with ctx.lock.step("moving its panes off the user's .git"):
            cmd = c.RecreateSession(by="fleetd: repository migrated")
            await ctx.execute(cmd)  # refuses unless RUNNING or ERROR; records nothing itself
            await remake(ctx, cmd.id)
    elif s.lifecycle is L.PAUSED:  # its old panes, stopped, would run on with the access
        async with ctx.lock.step("moving its paused panes off the user's .git"):
            await remake(ctx, "")
            await asyncio.to_thread(ctx.tmux.signal_panes, ctx.state.tmux_session, signal.SIGSTOP)
    return True

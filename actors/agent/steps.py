"""What an agent actor does in the world, step by step, each outcome recorded as an event.

Every function here runs with the actor's lock held (dispatch.py calls them, one command at a
time). Blocking calls (git, tmux, waiting for processes) go to a thread so the actor keeps
answering `show` meanwhile. A step that fails undoes what this attempt made, records that, and
ends in ERROR with the cause.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from actors.agent.checkpoints import as_checked_out, jailed_worktrees, take_auto
from actors.agent.confine import assign_user, recall
from actors.agent.context import AgentContext
from actors.agent.creds import grant_nats_user, revoke_nats_user
from actors.agent.devservices import start_services, stop_services
from actors.agent.portlease import lease_ports, release_ports
from actors.agent.quitting import quit_assistant
from actors.agent.recovery import migrate_legacy, open_session, remake
from actors.agent.session import session_name
from actors.agent.watchers import start_watching
from infra import heap, procs
from infra.worktree import WorktreeInfo
from schemas import commands as c
from schemas import events as e
from schemas.errors import FleetError, SessionMissing, WorktreeHasWork
from schemas.profiles import agent_profile
from schemas.states import Lifecycle

log = logging.getLogger(__name__)
L = Lifecycle


def _new_worktree(ctx: AgentContext) -> WorktreeInfo:
    s = ctx.state
    return ctx.worktrees().create(s.agent_id, s.name, s.base_ref)


async def bring_up(ctx: AgentContext) -> None:
    """SPAWNING -> worktree -> environment -> tmux session -> assistant -> RUNNING."""
    s = ctx.state
    made_worktree = False
    try:
        if s.worktree and Path(s.worktree).is_dir():
            path = Path(s.worktree)  # a restart keeps the agent's worktree and its work
            await migrate_legacy(ctx, adopting=False)  # an older linked worktree
        else:
            made = await asyncio.to_thread(_new_worktree, ctx)
            path, made_worktree = made.path, True
            ready = e.WorkspaceReady(
                path=str(path),
                branch=f"fleet/{s.name}",
                base_ref=s.base_ref,
                head=made.head,
                **ctx.meta(),
            )
            await ctx.record([ready])
        await lease_ports(ctx, path)  # before the session: its environment has them
        await grant_nats_user(ctx)  # its own NATS user, before anything in the session runs
        await recall(ctx)
        await assign_user(ctx, path)  # its own uid, its folders handed over
        if made_worktree:  # a stop with nothing changed names this checkout: no jailed git
            ctx.known_files = await asyncio.to_thread(as_checked_out, ctx, path, made.head)
        await open_session(ctx, path, replace=True)  # with the template's resources on it
        await ctx.execute(c.MarkRunning(by="agent"))
        await start_services(ctx)  # each waits for its dependencies once the lock is free
    except FleetError as err:
        await undo_spawn(ctx, made_worktree=made_worktree)
        await ctx.fail(f"spawn failed: {err}")
        raise
    start_watching(ctx)
    heap.give_back()  # what the spawn freed: an idle agent's memory is what it keeps


async def undo_spawn(ctx: AgentContext, *, made_worktree: bool = True) -> None:
    """Take back what a failed spawn made: its session, its ports, and a worktree it created."""
    s = ctx.state
    session = s.tmux_session or session_name(s.agent_id)
    if await asyncio.to_thread(ctx.tmux.has_session, session):
        await asyncio.to_thread(ctx.tmux.kill_session, session)
        closed = e.SessionClosed(
            socket=ctx.tmux.socket_name, session=session, reason="spawn undone", **ctx.meta()
        )
        await ctx.record([closed])
    await release_ports(ctx)
    await revoke_nats_user(ctx, quiet=True)
    if made_worktree and s.worktree and Path(s.worktree).is_dir():
        saved = await asyncio.to_thread(ctx.worktrees().remove, s.agent_id, True)
        removed = e.WorkspaceRemoved(
            path=s.worktree, saved_ref=saved or "", forced=True, **ctx.meta()
        )
        await ctx.record([removed])


async def stop(
    ctx: AgentContext, *, polite: bool, remove_worktree: bool = False, force: bool = False
) -> None:
    """STOPPING -> polite quit -> SIGTERM -> SIGKILL of every process tree -> STOPPED."""
    ctx.stop_watching()
    s = ctx.state
    reason = s.reason or "stop"
    await take_auto(ctx, "stop", reason)  # never raises: a stop goes on
    try:
        await stop_services(ctx, polite)  # dependents first, before the session ends
        if s.tmux_session:
            await _end_session(ctx, s.tmux_session, polite)
        await _bring_back(ctx)
        await release_ports(ctx)
        await revoke_nats_user(ctx)  # its connections are closed: nothing of it talks any more
        if remove_worktree and s.worktree:
            await remove_worktree_of(ctx, force)
    except FleetError as err:
        await ctx.fail(f"stop failed: {err}")
        raise
    await ctx.execute(c.MarkStopped(reason=reason, by="agent"))


async def _end_session(ctx: AgentContext, session: str, polite: bool) -> None:
    """The assistant asked to end (if polite) as its screen allows, then the rest as `_close`
    ends it. Nothing is typed into a dialog: the quit text only at the assistant's prompt, its
    cancel keys at a dialog or login (quitting.py). A session that is gone already (its tmux
    server died) has nothing left to end or to record."""
    tmux = ctx.tmux
    try:
        panes, grouped = await asyncio.to_thread(tmux.stop_view, session)
    except SessionMissing:
        return
    pids = [pid for _, pid in panes]
    await asyncio.to_thread(procs.signal_groups, pids, signal.SIGCONT, pids)  # paused: no quit
    if polite:
        profile = agent_profile(ctx.state)
        agent = next((pid for window, pid in panes if window == "agent"), None)
        budget = ctx.config.polite_timeout_s
        if await quit_assistant(tmux, session, profile, agent, budget):
            pids = [pid for pid in pids if pid != agent]  # gone: its pid is not its any more
    await _close(ctx, session, polite, (pids, grouped))


async def _close(
    ctx: AgentContext,
    session: str,
    polite: bool,
    known: tuple[list[int], list[str]] | None = None,
) -> None:
    """SIGTERM, then SIGKILL, every process left in the session; then the session itself.
    `known`: its panes' pids and grouped sessions, listed by the caller (the actor's lock held
    since, no pane or attach was made)."""
    cfg, tmux = ctx.config, ctx.tmux
    term = cfg.term_timeout_s if polite else 0.5
    await asyncio.to_thread(tmux.end_session, session, term, cfg.term_timeout_s, known)
    closed = e.SessionClosed(
        socket=tmux.socket_name, session=session, reason="stopped", **ctx.meta()
    )
    await ctx.record([closed])


async def _bring_back(ctx: AgentContext) -> None:
    """The agent's branch in the user's repository set to its HEAD, once nothing of it runs.
    A failure is logged and the stop goes on: the stop's checkpoint holds the work."""
    s = ctx.state
    if not s.worktree or not Path(s.worktree).is_dir():
        return
    try:
        await asyncio.to_thread(ctx.worktrees().bring_back, s.agent_id)
    except FleetError as err:
        log.warning("agent %s: its branch was not brought back: %s", s.agent_id, err)


async def remove_worktree_of(ctx: AgentContext, force: bool) -> None:
    s = ctx.state
    jailed = jailed_worktrees(ctx)  # its files are read in the agent's confinement
    saved = await asyncio.to_thread(jailed.remove, s.agent_id, force)
    await ctx.record(
        [e.WorkspaceRemoved(path=s.worktree, saved_ref=saved or "", forced=force, **ctx.meta())]
    )


async def refuse_if_work(ctx: AgentContext, force: bool) -> None:
    """Removing a worktree with unsaved or unmerged work needs force (checked before deciding)."""
    s = ctx.state
    if force or not s.worktree or not Path(s.worktree).is_dir():
        return
    wt = ctx.worktrees()
    dirty = await asyncio.to_thread(wt.is_dirty, s.worktree)
    unmerged = await asyncio.to_thread(wt.unmerged_commits, s.worktree, s.base_ref)
    if dirty or unmerged:
        raise WorktreeHasWork(s.agent_id, s.worktree, dirty, unmerged)


async def output(ctx: AgentContext, window: str, lines: int) -> str:
    s = ctx.state
    if not s.tmux_session:
        return ""
    lines = max(1, min(lines, 50_000))
    return await asyncio.to_thread(ctx.tmux.capture, s.tmux_session, window, lines, True)


async def recreate_session(ctx: AgentContext, cmd: c.RecreateSession) -> None:
    """Kill the tmux session (every process in it), make a new one, start the services again.

    An agent in ERROR has no running incarnation to repair: it is respawned instead.
    """
    await ctx.execute(cmd)  # refuses unless RUNNING or ERROR; records nothing itself
    if ctx.state.lifecycle is L.ERROR:
        await ctx.execute(c.Restart(id=cmd.id, by=cmd.by))
        await bring_up(ctx)
        return
    await remake(ctx, cmd.id)

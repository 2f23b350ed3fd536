"""What an agent actor does in the world, step by step, each outcome recorded as an event.

Every function here runs with the actor's lock held. Blocking calls (git, tmux, waiting for
processes) go to a thread so the actor keeps answering `show` meanwhile. A step that fails
undoes what this attempt made, records that, and ends in ERROR with the cause.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from actors import (
    checkpoints,
    confine,
    creds,
    keyboard,
    monitor,
    ports,
    quitting,
    recovery,
    services,
)
from infra import heap, procs, secretstore
from infra.worktree import WorktreeInfo, Worktrees
from schemas import commands as c
from schemas import events as e
from schemas.errors import FleetError, SessionMissing, WorktreeHasWork
from schemas.profiles import agent_profile
from schemas.states import Lifecycle

if TYPE_CHECKING:
    from actors.agent import AgentActor

log = logging.getLogger(__name__)
L = Lifecycle
WINDOWS = ("agent", "services", "monitor")
P = ParamSpec("P")
R = TypeVar("R")


async def run(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """A blocking call (git, tmux, waiting on processes) in a thread, off the actor's loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def session_name(agent_id: str) -> str:
    return f"fleet-{agent_id}"


def _meta(actor: AgentActor, cause: str = "") -> dict[str, Any]:
    from actors.agent import new_id, now

    return {
        "agent_id": actor.state.agent_id,
        "event_id": new_id(),
        "at": now(),
        "actor": "agent",
        "causation": cause,
    }


def worktrees(actor: AgentActor) -> Worktrees:
    return Worktrees(actor.state.repo, actor.config.worktree_root)


def agent_env(actor: AgentActor, worktree: Path) -> dict[str, str]:
    """The panes' whole environment (actors/confine.py): granted env, FLEET_*, ports."""
    s = actor.state
    env = {
        "FLEET_AGENT_ID": s.agent_id,
        "FLEET_AGENT_NAME": s.name,
        "FLEET_WORKTREE": str(worktree),
        "FLEET_TEMPLATE": s.template,
        **creds.env(actor),  # FLEET_NATS_URL (no password in it), FLEET_NATS_CREDS
    }
    for name, port in s.ports.items():  # "api.http" -> PORT_API_HTTP
        env["PORT_" + "".join(ch if ch.isalnum() else "_" for ch in name.upper())] = str(port)
    return confine.environment(actor, env)


def session_args(actor: AgentActor, worktree: Path) -> tuple[dict[str, str], list[str]]:
    """The environment of a new session and the sandbox prefix of its panes."""
    env = agent_env(actor, worktree)
    return env, confine.wrap(actor, [], list(env), worktree)


def _new_worktree(actor: AgentActor) -> WorktreeInfo:
    s = actor.state
    return worktrees(actor).create(s.agent_id, s.name, s.base_ref)


def _new_session(actor: AgentActor, session: str, worktree: Path) -> dict[str, Path]:
    """The session with its recordings, in one thread hop; a stale session of that name (from
    an older incarnation) is replaced. Its recording paths."""
    recordings = _recording_paths(actor)
    env, prefix = session_args(actor, worktree)
    command = actor.state.command or None
    actor.tmux.create_session(
        session, worktree, env, WINDOWS, command, recordings, prefix, replace=True
    )
    return recordings


async def bring_up(actor: AgentActor) -> None:
    """SPAWNING -> worktree -> environment -> tmux session -> assistant -> RUNNING."""
    s = actor.state
    session = session_name(s.agent_id)
    made_worktree = False
    try:
        if s.worktree and Path(s.worktree).is_dir():
            path = Path(s.worktree)  # a restart keeps the agent's worktree and its work
            await recovery.migrate_legacy(actor, adopting=False)  # an older linked worktree
        else:
            made = await run(_new_worktree, actor)
            path, made_worktree = made.path, True
            ready = e.WorkspaceReady(
                path=str(path),
                branch=f"fleet/{s.name}",
                base_ref=s.base_ref,
                head=made.head,
                **_meta(actor),
            )
            await actor.record([ready])
        await ports.lease(actor, path)  # before the session: its environment has them
        await creds.grant(actor)  # its own NATS user, before anything in the session runs
        await confine.recall(actor)
        await confine.assign_user(actor, path)  # its own uid, its folders handed over
        if made_worktree:  # a stop with nothing changed names this checkout: no jailed git
            actor.known_files = await run(checkpoints.as_checked_out, actor, path, made.head)
        recordings = await run(_new_session, actor, session, path)
        started = e.SessionStarted(
            socket=actor.tmux.socket_name,
            session=session,
            windows=WINDOWS,
            recording=str(recordings["agent"]),
            **_meta(actor),
        )
        await actor.record([started])
        await recovery.apply_limits(actor)  # the template's resources, on the session's panes
        await actor.execute(c.MarkRunning(by="agent"))
        await services.start(actor)  # each waits for its dependencies once the lock is free
    except FleetError as err:
        await undo_spawn(actor, made_worktree=made_worktree)
        await actor._fail(f"spawn failed: {err}")
        raise
    actor._start_monitor()
    heap.give_back()  # what the spawn freed: an idle agent's memory is what it keeps


def _recording_paths(actor: AgentActor) -> dict[str, Path]:
    """An asciicast file per window, new for each incarnation of the session."""
    folder = Path(actor.config.state_dir) / "recordings" / actor.state.agent_id
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return {window: folder / f"{stamp}-{window}.cast" for window in WINDOWS}


async def undo_spawn(actor: AgentActor, *, made_worktree: bool = True) -> None:
    """Take back what a failed spawn made: its session, its ports, and a worktree it created."""
    s = actor.state
    session = s.tmux_session or session_name(s.agent_id)
    if await run(actor.tmux.has_session, session):
        await run(actor.tmux.kill_session, session)
        await actor.record(
            [
                e.SessionClosed(
                    socket=actor.tmux.socket_name,
                    session=session,
                    reason="spawn undone",
                    **_meta(actor),
                )
            ]
        )
    await ports.release(actor)
    await creds.revoke(actor, quiet=True)
    if made_worktree and s.worktree and Path(s.worktree).is_dir():
        saved = await run(worktrees(actor).remove, s.agent_id, True)
        await actor.record(
            [
                e.WorkspaceRemoved(
                    path=s.worktree, saved_ref=saved or "", forced=True, **_meta(actor)
                )
            ]
        )


async def stop(
    actor: AgentActor, *, polite: bool, remove_worktree: bool = False, force: bool = False
) -> None:
    """STOPPING -> polite quit -> SIGTERM -> SIGKILL of every process tree -> STOPPED."""
    actor._stop_monitor()
    s = actor.state
    reason = s.reason or "stop"
    await checkpoints.take_auto(actor, "stop", reason)  # never raises: a stop goes on
    try:
        await services.stop(actor, polite)  # dependents first, before the session ends
        if s.tmux_session:
            await _end_session(actor, s.tmux_session, polite)
        await _bring_back(actor)
        await ports.release(actor)
        await creds.revoke(actor)  # its connections are closed: nothing of it talks any more
        if remove_worktree and s.worktree:
            await _remove_worktree(actor, force)
    except FleetError as err:
        await actor._fail(f"stop failed: {err}")
        raise
    await actor.execute(c.MarkStopped(reason=reason, by="agent"))


async def _end_session(actor: AgentActor, session: str, polite: bool) -> None:
    """The assistant asked to end (if polite) as its screen allows, then the rest as `_close`
    ends it. Nothing is typed into a dialog: the quit text only at the assistant's prompt, its
    cancel keys at a dialog or login (actors/quitting.py). A session that is gone already (its
    tmux server died) has nothing left to end or to record."""
    tmux = actor.tmux
    try:
        panes, grouped = await run(tmux.stop_view, session)
    except SessionMissing:
        return
    pids = [pid for _, pid in panes]
    await run(procs.signal_groups, pids, signal.SIGCONT, pids)  # a paused agent cannot quit
    if polite:
        profile = agent_profile(actor.state)
        agent = next((pid for window, pid in panes if window == "agent"), None)
        budget = actor.config.polite_timeout_s
        if await quitting.quit_assistant(tmux, session, profile, agent, budget):
            pids = [pid for pid in pids if pid != agent]  # gone: its pid is not its any more
    await _close(actor, session, polite, (pids, grouped))


async def _close(
    actor: AgentActor,
    session: str,
    polite: bool,
    known: tuple[list[int], list[str]] | None = None,
) -> None:
    """SIGTERM, then SIGKILL, every process left in the session; then the session itself.
    `known`: its panes' pids and grouped sessions, listed by the caller (the actor's lock held
    since, no pane or attach was made)."""
    cfg, tmux = actor.config, actor.tmux
    term = cfg.term_timeout_s if polite else 0.5
    await run(tmux.end_session, session, term, cfg.term_timeout_s, known)
    closed = e.SessionClosed(
        socket=tmux.socket_name, session=session, reason="stopped", **_meta(actor)
    )
    await actor.record([closed])


async def _bring_back(actor: AgentActor) -> None:
    """The agent's branch in the user's repository set to its HEAD, once nothing of it runs.
    A failure is logged and the stop goes on: the stop's checkpoint holds the work."""
    s = actor.state
    if not s.worktree or not Path(s.worktree).is_dir():
        return
    try:
        await run(worktrees(actor).bring_back, s.agent_id)
    except FleetError as err:
        log.warning("agent %s: its branch was not brought back: %s", s.agent_id, err)


async def _remove_worktree(actor: AgentActor, force: bool) -> None:
    s = actor.state
    saved = await run(checkpoints.worktrees(actor).remove, s.agent_id, force)  # jailed reads
    await actor.record(
        [e.WorkspaceRemoved(path=s.worktree, saved_ref=saved or "", forced=force, **_meta(actor))]
    )


async def _refuse_if_work(actor: AgentActor, force: bool) -> None:
    """Removing a worktree with unsaved or unmerged work needs force (checked before deciding)."""
    s = actor.state
    if force or not s.worktree or not Path(s.worktree).is_dir():
        return
    wt = worktrees(actor)
    dirty = await run(wt.is_dirty, s.worktree)
    unmerged = await run(wt.unmerged_commits, s.worktree, s.base_ref)
    if dirty or unmerged:
        raise WorktreeHasWork(s.agent_id, s.worktree, dirty, unmerged)


async def output(actor: AgentActor, window: str, lines: int) -> str:
    s = actor.state
    if not s.tmux_session:
        return ""
    return await run(actor.tmux.capture, s.tmux_session, window, max(1, min(lines, 50_000)), True)


async def act(actor: AgentActor, cmd: c.AgentCommand) -> dict[str, Any]:
    """Decide, record and carry out one writing command; return extra reply fields."""
    tmux, s = actor.tmux, actor.state
    match cmd:
        case c.Pause() | c.Resume():
            await actor.execute(cmd)
            sig = signal.SIGSTOP if isinstance(cmd, c.Pause) else signal.SIGCONT
            await run(tmux.signal_panes, s.tmux_session, sig)
        case c.Stop(remove_worktree=remove, force=force):
            if remove:
                await _refuse_if_work(actor, force)
            if await actor.execute(cmd):
                await stop(actor, polite=True, remove_worktree=remove, force=force)
            elif remove and actor.state.lifecycle is L.STOPPED and actor.state.worktree:
                await _remove_worktree(actor, force)
        case c.Kill():
            if await actor.execute(cmd):
                await stop(actor, polite=False)
        case c.Restart():
            await actor.execute(cmd)
            if actor.state.lifecycle is L.STOPPING:
                await stop(actor, polite=True)
                await actor.execute(cmd)
            await bring_up(actor)
        case c.Send(text=text, keys=keys, enter=enter):
            await monitor.refuse_dead_pane(actor)  # nothing typed into, or logged for, a dead pane
            await actor.execute(cmd)
            if text:  # pasted, then Enter once it is taken (actors/keyboard.py)
                profile = agent_profile(s)
                await keyboard.enter_text(
                    tmux, s.tmux_session, "agent", profile, text, enter=enter and not keys
                )
            if keys:
                await run(tmux.send_keys, s.tmux_session, "agent", list(keys))
        case c.Attach(user=user, readonly=readonly):
            await actor.execute(cmd)
            grouped = await run(tmux.grouped_session, s.tmux_session, user)
            argv = tmux.attach_argv(grouped) + (["-r"] if readonly else [])
            return {"session": grouped, "argv": argv}
        case c.Detach(user=user):
            if await actor.execute(cmd):
                await run(tmux.end_user_session, s.tmux_session, user)
        case c.RecreateSession():
            await recovery.recreate_session(actor, cmd)
        case c.NewPorts():
            await recovery.new_ports(actor, cmd)
        case c.RestartService(service=name):
            await actor.execute(cmd)
            await services.restart(actor, name, cmd.id)
        case c.Remove(force=force):
            await _refuse_if_work(actor, force)
            await actor.execute(cmd)
            await creds.revoke(actor)  # an agent removed from ERROR may still hold its user
            if s.worktree and Path(s.worktree).is_dir():
                await _remove_worktree(actor, True)
            await secretstore.delete(actor.nc, s.agent_id)
            await confine.release_user(actor)
        case c.Checkpoint():
            return await checkpoints.checkpoint(actor, cmd)
        case c.Rollback():
            return await checkpoints.rollback(actor, cmd)
        case c.ReportHealth(healthy=False, service=name):
            if await actor.execute(cmd):  # the service just turned unhealthy
                await checkpoints.take_auto(actor, "unhealthy", f"{name} unhealthy", cmd.id)
        case _:
            await actor.execute(cmd)
    return {}

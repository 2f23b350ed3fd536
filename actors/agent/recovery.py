"""The agent's side of recovery and resource limits: rungs of the ladder, and the limits watchdog.

`recreate_session` and `new_ports` are rungs that the health service sends (schemas.recovery);
each runs with the actor's lock held, like every step, and records what it changes.

Limits are applied once the session exists (`apply_limits`, called by `steps.bring_up`):
the pane processes go into the agent's cgroups (or get rlimits), and a watchdog task brings
panes opened later (dev services) under the same limits, reports going over a limit as
`resources.exceeded` and follows the template's `on_exceed` (warn, restart, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from actors import ports, services, steps
from infra import limits
from schemas import commands as c
from schemas import events as e
from schemas.errors import FleetError
from schemas.states import Lifecycle
from schemas.templates import Resources

if TYPE_CHECKING:
    from actors.agent import AgentActor

log = logging.getLogger(__name__)

L = Lifecycle
WATCH_PERIOD_S = 1.0
LIVE = frozenset({L.SPAWNING, L.RUNNING, L.PAUSED})  # limits are applied while spawning
_watchdogs: dict[str, asyncio.Task[None]] = {}  # agent id -> its limits watchdog


async def recreate_session(actor: AgentActor, cmd: c.RecreateSession) -> None:
    """Kill the tmux session (every process in it), make a new one, start the services again.

    An agent in ERROR has no running incarnation to repair: it is respawned instead.
    """
    await actor.execute(cmd)  # refuses unless RUNNING or ERROR; records nothing itself
    if actor.state.lifecycle is L.ERROR:
        await actor.execute(c.Restart(id=cmd.id, by=cmd.by))
        await steps.bring_up(actor)
        return
    await _remake(actor, cmd.id)


async def _remake(actor: AgentActor, cause: str) -> None:
    """The session killed (every process in it) and made anew, its services started again."""
    actor._stop_monitor()
    await services.stop(actor, polite=False, cause=cause)
    s = actor.state
    live: bool = bool(s.tmux_session) and await steps.run(actor.tmux.has_session, s.tmux_session)
    if live:
        await steps.run(actor.tmux.kill_session, s.tmux_session)
    closed = e.SessionClosed(
        socket=actor.tmux.socket_name,
        session=s.tmux_session or steps.session_name(s.agent_id),
        reason="recreate_session",
        **steps._meta(actor, cause),
    )
    await actor.record([closed])
    try:
        await _new_session(actor, cause)
        await services.start(actor)
    except FleetError as err:
        await actor._fail(f"recreating the session failed: {err}")
        raise
    actor._start_monitor()


async def _new_session(actor: AgentActor, cause: str) -> None:
    """The session as `bring_up` makes it, in the worktree the agent already has."""
    s = actor.state
    session = steps.session_name(s.agent_id)
    path = Path(s.worktree)
    recordings = await steps.run(steps._recording_paths, actor)
    env, prefix = await steps.run(steps.session_args, actor, path)
    create = actor.tmux.create_session
    await steps.run(
        create, session, path, env, steps.WINDOWS, s.command or None, recordings, prefix
    )
    started = e.SessionStarted(
        socket=actor.tmux.socket_name,
        session=session,
        windows=steps.WINDOWS,
        recording=str(recordings["agent"]),
        **steps._meta(actor, cause),
    )
    await actor.record([started])
    await apply_limits(actor)


async def new_ports(actor: AgentActor, cmd: c.NewPorts) -> None:
    """Stop the services, give every lease back, lease again, start the services on the new ports.

    A port something else grabbed (the usual reason a service cannot bind) is then no longer
    the agent's: the ports service checks each new lease with a real bind.
    """
    await actor.execute(cmd)
    if actor.state.lifecycle is not L.RUNNING:
        return
    await services.stop(actor, polite=True, cause=cmd.id)
    await ports.release(actor)
    await ports.lease(actor, Path(actor.state.worktree))
    await services.start(actor)


# -- agents made before each had a repository of its own ---------------------------------------


async def migrate_legacy(actor: AgentActor, adopting: bool = True) -> bool:
    """When the actor starts (`adopting` its panes) and before a restart makes panes: an
    agent whose worktree is still a linked worktree of the user's repository (made before
    agents had repositories of their own, infra/worktree.py) gets a repository of its own, so
    its panes lose write access to the user's git directory. Panes that outlived the actor
    were started with that access: a RUNNING agent's session is made again at once (its
    assistant restarts in the same worktree); a PAUSED one's too, and its new panes are
    stopped again, so it stays PAUSED. Whether it was migrated; one that cannot be is logged
    with its reason and the agent goes on as it was."""
    s = actor.state
    if not s.worktree or not s.repo or not Path(s.worktree).is_dir():
        return False
    try:
        moved = await steps.run(steps.worktrees(actor).migrate, s.agent_id)
    except FleetError as err:
        log.warning("agent %s keeps its linked worktree (and write access to the user's .git)"
                    " until it is removed and spawned again: %s", s.agent_id, err)  # fmt: skip
        return False
    if not moved:
        return False
    log.warning("agent %s: its linked worktree is now a repository of its own", s.agent_id)
    if not adopting:  # the panes about to be made get the new grants
        return True
    live = bool(s.tmux_session) and await steps.run(actor.tmux.has_session, s.tmux_session)
    if not live:
        return True
    if s.lifecycle is L.RUNNING:
        async with actor.lock.step("moving its panes off the user's .git"):
            await recreate_session(actor, c.RecreateSession(by="fleetd: repository migrated"))
    elif s.lifecycle is L.PAUSED:  # its old panes, stopped, would run on with the access
        async with actor.lock.step("moving its paused panes off the user's .git"):
            await _remake(actor, "")
            await steps.run(actor.tmux.signal_panes, actor.state.tmux_session, signal.SIGSTOP)
    return True


# -- resource limits --------------------------------------------------------------------------


def resources_of(actor: AgentActor) -> Resources:
    return services.template_of(actor).resources


async def apply_limits(actor: AgentActor) -> None:
    """Put the new session's processes under the template's limits and watch them."""
    resources = resources_of(actor)
    agent_id, session = actor.state.agent_id, actor.state.tmux_session
    if resources == Resources():
        return
    pids = await steps.run(actor.tmux.pane_pids, session)
    try:
        backend = await steps.run(limits.apply, agent_id, pids, resources)
    except OSError as err:  # a cgroup file refused: run unlimited rather than not at all
        log.warning("agent %s: limits not applied: %s", agent_id, err)
        return
    log.info("agent %s: limits applied with %s", agent_id, backend)
    old = _watchdogs.pop(agent_id, None)
    if old is not None:
        old.cancel()
    task = asyncio.get_running_loop().create_task(watch(actor, session, resources))
    _watchdogs[agent_id] = task


async def watch(actor: AgentActor, session: str, resources: Resources) -> None:
    """Until this session ends: adopt new panes, report what went over, act per policy."""
    agent_id, lim = actor.state.agent_id, limits.default()
    try:
        while actor.state.tmux_session == session and actor.state.lifecycle in LIVE:
            try:
                pids = await steps.run(actor.tmux.pane_pids, session)
            except FleetError:
                break  # the session is gone
            await steps.run(lim.adopt, agent_id, pids)
            for over in await steps.run(lim.check, agent_id, pids):
                await _exceeded(actor, over, resources.on_exceed)
            await asyncio.sleep(WATCH_PERIOD_S)
    finally:
        if _watchdogs.get(agent_id) is asyncio.current_task():
            del _watchdogs[agent_id]
            with contextlib.suppress(OSError):
                await steps.run(lim.release, agent_id)


async def _exceeded(actor: AgentActor, over: limits.Exceeded, policy: str) -> None:
    event = e.ResourcesExceeded(
        resource=over.resource,
        limit=over.limit,
        value=round(over.value, 3),
        action=policy,
        enforced_by=over.enforced_by,
        **steps._meta(actor),
    )
    async with actor.lock.step("recording a resource limit"):
        await actor.record([event])
    if policy == "warn":
        return
    cmd: c.AgentCommand = c.Restart(by="limits") if policy == "restart" else c.Stop(by="limits")
    # Its own task: the restart ends this session, and with it the watchdog that asked.
    asyncio.get_running_loop().create_task(_command(actor, cmd))


async def _command(actor: AgentActor, cmd: c.AgentCommand) -> None:
    try:
        await actor.handle(cmd)
    except FleetError as err:
        log.warning("agent %s: %s after a limit was exceeded failed: %s", actor.state.agent_id,
                    type(cmd).__name__, err)  # fmt: skip

"""An agent's resource limits: applied to its session's panes, then kept by a watchdog.

Limits are applied once the session exists (`apply_limits`, called by `steps.bring_up` and
when recovery makes the session anew): the pane processes go into the agent's cgroups (or get
rlimits), and a watchdog task, one per agent (`AgentContext.watchdog`), brings panes opened
later (dev services) under the same limits, reports going over a limit as
`resources.exceeded` and follows the template's `on_exceed` (warn, restart, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from actors.agent.context import AgentContext
from actors.agent.devservices import template_of
from infra import limits
from schemas import commands as c
from schemas import events as e
from schemas.errors import FleetError
from schemas.states import Lifecycle
from schemas.templates import Resources

log = logging.getLogger(__name__)

L = Lifecycle
WATCH_PERIOD_S = 1.0
LIVE = frozenset({L.SPAWNING, L.RUNNING, L.PAUSED})  # limits are applied while spawning


def resources_of(ctx: AgentContext) -> Resources:
    return template_of(ctx).resources


async def apply_limits(ctx: AgentContext) -> None:
    """Put the new session's processes under the template's limits and watch them."""
    resources = resources_of(ctx)
    agent_id, session = ctx.state.agent_id, ctx.state.tmux_session
    if resources == Resources():
        return
    pids = await asyncio.to_thread(ctx.tmux.pane_pids, session)
    try:
        backend = await asyncio.to_thread(limits.apply, agent_id, pids, resources)
    except OSError as err:  # a cgroup file refused: run unlimited rather than not at all
        log.warning("agent %s: limits not applied: %s", agent_id, err)
        return
    log.info("agent %s: limits applied with %s", agent_id, backend)
    old, ctx.watchdog = ctx.watchdog, None
    if old is not None:
        old.cancel()
    ctx.watchdog = asyncio.get_running_loop().create_task(watch(ctx, session, resources))


async def watch(ctx: AgentContext, session: str, resources: Resources) -> None:
    """Until this session ends: adopt new panes, report what went over, act per policy."""
    agent_id, lim = ctx.state.agent_id, limits.default()
    try:
        while ctx.state.tmux_session == session and ctx.state.lifecycle in LIVE:
            try:
                pids = await asyncio.to_thread(ctx.tmux.pane_pids, session)
            except FleetError:
                break  # the session is gone
            await asyncio.to_thread(lim.adopt, agent_id, pids)
            for over in await asyncio.to_thread(lim.check, agent_id, pids):
                await _exceeded(ctx, over, resources.on_exceed)
            await asyncio.sleep(WATCH_PERIOD_S)
    finally:
        if ctx.watchdog is asyncio.current_task():
            ctx.watchdog = None
            with contextlib.suppress(OSError):
                await asyncio.to_thread(lim.release, agent_id)


async def _exceeded(ctx: AgentContext, over: limits.Exceeded, policy: str) -> None:
    event = e.ResourcesExceeded(
        resource=over.resource,
        limit=over.limit,
        value=round(over.value, 3),
        action=policy,
        enforced_by=over.enforced_by,
        **ctx.meta(),
    )
    async with ctx.lock.step("recording a resource limit"):
        await ctx.record([event])
    if policy == "warn":
        return
    cmd: c.AgentCommand = c.Restart(by="limits") if policy == "restart" else c.Stop(by="limits")
    # Its own task: the restart ends this session, and with it the watchdog that asked.
    asyncio.get_running_loop().create_task(_command(ctx, cmd))


async def _command(ctx: AgentContext, cmd: c.AgentCommand) -> None:
    try:
        await ctx.submit(cmd)
    except FleetError as err:
        log.warning("agent %s: %s after a limit was exceeded failed: %s", ctx.state.agent_id,
                    type(cmd).__name__, err)  # fmt: skip

"""What runs beside a live session: the screen monitor (monitor.py) and the interval
checkpoints (checkpoints.py). Started together here once the session is up; stopped together
by `AgentContext.stop_watching` (a stop, a failure, a session made anew)."""

from __future__ import annotations

from actors.agent.checkpoints import start_interval
from actors.agent.context import AgentContext
from actors.agent.monitor import ActivityMonitor
from schemas.profiles import agent_profile


def start_watching(ctx: AgentContext) -> None:
    if ctx.monitor is None and ctx.state.tmux_session:
        ctx.monitor = ActivityMonitor(ctx, agent_profile(ctx.state), ctx.config.monitor_period_s)
        ctx.monitor.start()
        ctx.interval = start_interval(ctx)

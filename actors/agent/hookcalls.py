"""What an agent's assistant says of itself through its hooks, checked, then recorded.

The hooks fleetd installs (assistantconfig.py) run `fleet hook`, which sends a
`HookCall` on `fleet.hook.<agent_id>` with the agent's own NATS user (the only agent that may
publish there: infra/natsauth.py). The actor answers here: a call too big, not a `HookCall`,
for another agent, from another assistant than the agent's, or too frequent is refused with
one sentence and nothing is recorded; one that reports an activity is recorded as
`ActivityChanged` with source "hook", and the screen monitor then lets it stand for
`hooks.HOOK_HOLD_S` (monitor.py, `screen_may_record`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

from actors.agent.context import AgentContext
from infra import errorlog
from schemas import commands as c
from schemas import hooks, replies
from schemas.profiles import agent_profile
from schemas.ratelimit import RateLimiter
from schemas.states import Lifecycle

log = logging.getLogger(__name__)
HOOK_RATE, HOOK_BURST = 20.0, 60.0  # per agent: its assistant's hooks cannot flood its log
LOCK_WAIT_S = 1.5  # a hook waits this long for a step in progress (`fleet hook` waits 2 s)


class HookDesk:
    """The actor's answer to its `fleet.hook.<id>` (one per actor)."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.limiter = RateLimiter(HOOK_RATE, HOOK_BURST, "hook calls")

    async def on_message(self, msg: Msg) -> None:
        asyncio.get_running_loop().create_task(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        try:
            reply = await self.answer(msg.data)
        except Exception as e:  # noqa: BLE001 (the one error boundary: infra/errorlog.py)
            reply = errorlog.reply_to(e, log, f"agent {self.ctx.agent_id}: a hook call")
        if msg.reply:
            await msg.respond(reply)

    async def answer(self, data: bytes) -> bytes:
        """Check one call and record what it says; the reply (a refusal raises FleetError)."""
        ctx = self.ctx
        agent_id = ctx.state.agent_id
        self.limiter.check(agent_id, time.monotonic())
        call: hooks.HookCall = replies.decode_request(
            data, hooks.HookCall, "hook call", hooks.MAX_HOOK_BYTES
        )
        hooks.check_call(call, agent_id)
        monitor = ctx.monitor
        profile = monitor.profile.name if monitor is not None else agent_profile(ctx.state).name
        report = hooks.read(call, profile)
        if report is None:
            return replies.ok(recorded=False, ignored=True)
        cmd = c.ObserveActivity(
            activity=report.activity, detail=report.detail, source="hook", by="agent"
        )
        async with ctx.lock.within(LOCK_WAIT_S, agent_id, "hook"):
            if ctx.state.lifecycle is not Lifecycle.RUNNING:
                return replies.ok(recorded=False, ignored=True)
            events = await ctx.execute(cmd)
            if ctx.monitor is not None:
                ctx.monitor.hook_said(report, time.monotonic())
        return replies.ok(recorded=bool(events), activity=report.activity.value)

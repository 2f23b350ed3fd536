"""Watching the assistant's screen: activity changes and an assistant that exited.

The agent window is recorded to an asciicast file, so a screen that did not change is seen
with one `stat` and no tmux call: an idle fleet of 50 agents costs no subprocesses. After the
recording grows, the screen is captured and classified for a few periods, long enough for
the debouncer to settle, so a flickering spinner does not flood the log.

The agent window's process is watched by a pidfd, every period whatever the screen does: a
pane killed from outside (its process sent SIGKILL, say) prints nothing, and was noticed only
at the next change of the screen, which never came. Its death is recorded as ERROR with what
tmux says of it (an exit status, or the signal that killed it) within a period or two, and
`send` refuses a pane that is dead before the monitor has seen it (`pane_death`).

What the assistant's own hooks said (hookcalls.py) outranks the screen for a while
(schemas/hooks.py `screen_may_record`): a reading held back stays a candidate, looked at each
period, and is recorded once the hold is over if the screen still says so. A login or a
first-run (folder trust) dialog is recorded at once, whatever a hook said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import struct
import time

import msgspec

from actors.agent.context import AgentContext
from infra.tmux import Tmux
from schemas import commands as c
from schemas.assistants import (
    WAITING,
    AssistantProfile,
    Debouncer,
    classify,
    detail,
    first_run,
    last_words,
)
from schemas.errors import FleetError, PaneDead, SessionMissing, TmuxFailed
from schemas.hooks import HookClaim, HookReport, screen_may_record
from schemas.recovery import SESSION_GONE
from schemas.states import Activity, Lifecycle

log = logging.getLogger(__name__)
SETTLE_WINDOW_S = 3.0  # keep looking this long after the screen last changed
NO_PIDFD_CHECK_S = 2.0  # without a pidfd (Linux < 5.3), tmux is asked this often instead
UNREAPED_S = 2.0  # a process that exited and that tmux still shows running is dead after this
AGENT_WINDOW = "agent"
# tmux formats: whether the pane's process is gone, its exit status (empty if a signal ended
# it), that signal, and the status the waiting shell left (infra/tmux_socket.py `pausable`).
_DEATH_FORMAT = "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}|#{@fleet_exit}|#{pane_pid}"


def _server_id(socket_name: str) -> int | None:
    """The pid of the tmux server listening on the fleet's socket, else None; no tmux call.

    tmux keeps its socket at $TMUX_TMPDIR (else /tmp)/tmux-<uid>/<name>; a server that exits
    removes it, one killed with SIGKILL leaves it (a connect is then refused), and a new server
    makes a new one. The peer's credentials (SO_PEERCRED) name the listening process, so a new
    server is told apart even where the file system hands the new socket the old inode."""
    base = os.environ.get("TMUX_TMPDIR") or "/tmp"
    path = os.path.join(base, f"tmux-{os.getuid()}", socket_name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError:  # anything else (a full backlog, a timeout): not evidence of death
            return -1
    pid: int = _UCRED.unpack(creds)[0]
    return pid


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def death_cause(status: str, signal: str, kept: str) -> str:
    """What ended the agent window's process, from tmux's formats (see `_DEATH_FORMAT`)."""
    if signal.isdigit() and int(signal) > 0:
        return f"the agent window's process was killed by signal {signal}"
    code = status if status.lstrip("-").isdigit() else kept
    if not code.lstrip("-").isdigit():
        return "the agent window's process exited (status unknown)"
    number = int(code)
    if 128 < number <= 128 + 64:  # the waiting shell's report of a command a signal ended
        return f"the assistant was killed by signal {number - 128} (exit status {number})"
    return f"the assistant exited with status {number}"


def pane_death(tmux: Tmux, session: str) -> tuple[bool, str, int | None]:
    """(whether tmux has the agent window's process as dead, what ended it, its pid while it
    runs). One tmux call; a session that is gone is a death too."""
    try:
        out = tmux.display(session, AGENT_WINDOW, _DEATH_FORMAT)
    except SessionMissing:
        return True, f"{SESSION_GONE} (its session was closed)", None
    except TmuxFailed as e:
        if "can't find window" in e.detail or "can't find pane" in e.detail:
            return True, f"{SESSION_GONE} (its agent window was closed)", None
        raise
    dead, status, signal, kept, pid = [*out.split("|"), "", "", "", "", ""][:5]
    return dead == "1", death_cause(status, signal, kept), int(pid) if pid.isdigit() else None


class _ServerWatch:
    """Whether a process we know (the tmux server, the agent window's process) still runs.

    A pidfd of its pid is readable once that process has exited, so while it is not, the
    server (and the socket it listens on) is the one we knew: a check costs one poll of our
    own descriptor, not an accept and a client teardown in the server that every agent's
    monitor would make twice a second (400 a second for the one tmux server of 200 agents),
    nor a tmux call per agent and period for its pane."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._fd: int | None = None

    def watch(self, pid: int | None) -> None:
        if pid == self.pid and self._fd is not None:
            return
        self.close()
        self.pid = pid
        if pid is not None and pid > 0:
            with contextlib.suppress(OSError):  # gone already, or no pidfd (Linux < 5.3)
                self._fd = os.pidfd_open(pid)

    @property
    def watched(self) -> bool:
        return self._fd is not None

    def alive(self) -> bool:
        """True while the watched process runs; False if it exited or cannot be watched."""
        if self._fd is None:
            return False
        readable, _, _ = select.select([self._fd], [], [], 0)
        return not readable

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ActivityMonitor:
    def __init__(self, ctx: AgentContext, profile: AssistantProfile, period_s: float) -> None:
        self.ctx = ctx
        self.profile = profile
        self.period_s = period_s
        state = ctx.state
        self.debouncer = Debouncer(reported=state.activity, reported_detail=state.activity_detail)
        self.task: asyncio.Task[None] | None = None
        self._size = -1
        self._still = False
        self._changed_at = time.monotonic()
        # The tmux server this incarnation's session lives on (see `_server_id`).
        self._server = _server_id(ctx.tmux.socket_name)
        self._watch = _ServerWatch()
        self._watch.watch(self._server)
        self._pane = _ServerWatch()  # the agent window's process, learnt at the first tick
        self._pane_asked_at = 0.0
        self._exited_at: float | None = None  # when its process was seen gone, tmux not knowing
        self.claim: HookClaim | None = None  # what its assistant's hook said last, and when

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """End the watch; from inside a tick (the monitor found the assistant dead) the loop
        ends after it, since cancelling the running tick would cut its own write short."""
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None
        self._watch.close()
        self._pane.close()

    async def _run(self) -> None:
        me = asyncio.current_task()
        while self.task is me:
            await asyncio.sleep(self.period_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent %s: activity check failed", self.ctx.state.agent_id)

    def _screen_moved(self) -> bool:
        """Whether to look at the screen this period: it changed lately, or the debouncer is
        settling a change (an unknown screen is READY only after it has stood still a while).
        `_still` says whether it changed since the last period."""
        path = self.ctx.state.recording
        try:
            size = os.stat(path).st_size if path else -1
        except OSError:
            size = -1
        now = time.monotonic()
        self._still = size == self._size and size >= 0
        if not self._still:
            self._size, self._changed_at = size, now
            return True
        return now - self._changed_at < SETTLE_WINDOW_S or self.debouncer.pending()

    async def tick(self) -> None:
        ctx = self.ctx
        state = ctx.state
        # The socket is asked only when the server we knew is gone (or was never known).
        server = self._server if self._watch.alive() else _server_id(ctx.tmux.socket_name)
        if state.lifecycle is Lifecycle.RUNNING and server not in (-1, self._server):
            # Another server than the one we knew (or none, or we never knew one): ours only
            # if our session is on it. One tmux call, made only when the socket changed.
            here = server is not None and await asyncio.to_thread(
                ctx.tmux.has_session, state.tmux_session
            )
            if here:
                self._server = server
                self._watch.watch(server)
            else:
                async with ctx.lock.step(
                    "recording a lost session"
                ):  # no session: the recovery ladder rebuilds it
                    if ctx.state.lifecycle is Lifecycle.RUNNING:
                        await ctx.fail(f"{SESSION_GONE} (the tmux server died or was killed)")
                return
        if state.lifecycle in _WATCHED and await self._pane_died():
            return
        if state.lifecycle is not Lifecycle.RUNNING or not self._screen_moved():
            return
        tmux, session = ctx.tmux, state.tmux_session
        screen = await asyncio.to_thread(tmux.capture, session, AGENT_WINDOW, None, False)
        activity = classify(screen, self.profile)
        said = detail(screen, self.profile, activity) if activity is not None else ""
        now = time.monotonic()
        before = self.debouncer
        self.debouncer, change = before.observe(activity, said, now, still=self._still)
        if change is None:
            return
        dialog = first_run(screen)
        if not screen_may_record(self.claim, change, first_run=dialog, now=now):
            self._hold_back(before, change, said, now)
            return
        said = self.debouncer.reported_detail
        async with ctx.lock.step("recording its activity"):
            if ctx.state.lifecycle is not Lifecycle.RUNNING:
                return
            # A hook spoke while this waited for the lock (`hook_said` has set the debouncer):
            # its word stands.
            later = time.monotonic()
            if not screen_may_record(self.claim, change, first_run=dialog, now=later):
                self._hold_back(self.debouncer, change, said, later)
                return
            try:
                await ctx.execute(c.ObserveActivity(activity=change, detail=said, by="agent"))
            except FleetError as e:  # e.g. a jump the activity table does not allow
                log.info("agent %s: activity %s not recorded: %s", state.agent_id, change, e)

    def _hold_back(self, base: Debouncer, change: Activity, said: str, now: float) -> None:
        """The hook's word stands: the reading stays a candidate of `base` (the debouncer as
        the hook left it), looked at each period until the hook's hold ends (then it is
        recorded, if the screen still says so)."""
        kept = said if change in WAITING else ""
        self.debouncer = msgspec.structs.replace(
            base, candidate=change, candidate_detail=kept, candidate_since=now
        )

    def hook_said(self, report: HookReport, now: float) -> None:
        """A hook's report was recorded: the screen may not overrule it for a while, and the
        debouncer knows it as the activity reported."""
        self.claim = HookClaim(activity=report.activity, at=now, refinable=report.refinable)
        self.debouncer = msgspec.structs.replace(
            self.debouncer,
            reported=report.activity,
            reported_detail=report.detail if report.activity in WAITING else "",
            reported_at=now,
            candidate=None,
            candidate_detail="",
        )

    def pane_seen_alive(self) -> bool:
        """Whether the agent window's process is the one watched and still runs (no tmux
        call; False when it is not known yet)."""
        return self._pane.watched and self._pane.alive()

    def pane_seen_exited(self) -> bool:
        """Whether the watched agent window's process is known to have exited."""
        return self._pane.watched and not self._pane.alive()

    async def _pane_died(self) -> bool:
        """Whether the agent window's process has ended; if so, ERROR is recorded with why."""
        if self._pane.watched and self._pane.alive():
            return False
        now = time.monotonic()
        no_pidfd = self._pane.pid is not None and not self._pane.watched  # ask now and then
        if no_pidfd and now - self._pane_asked_at < NO_PIDFD_CHECK_S:
            return False
        self._pane_asked_at = now
        ctx = self.ctx
        dead, cause, pid = await asyncio.to_thread(pane_death, ctx.tmux, ctx.state.tmux_session)
        if not dead and not (self._pane.watched and pid == self._pane.pid):
            self._pane.watch(pid)  # it runs: watch that process (a respawned pane: a new one)
            self._exited_at = None
            return False
        if not dead:  # exited, and tmux has not reaped it yet (tmux 3.3 sometimes never does)
            self._exited_at = self._exited_at or now
            if now - self._exited_at < UNREAPED_S:
                return False
        cause = await _with_last_words(ctx, cause)
        async with ctx.lock.step("recording that the agent window's process ended"):
            if ctx.state.lifecycle in _WATCHED:
                log.warning("agent %s: %s", ctx.state.agent_id, cause)
                await ctx.fail(cause)
        return True


_WATCHED = (Lifecycle.RUNNING, Lifecycle.PAUSED)
_DEAD_SCREEN_LINES = 80  # the screen (50 rows) and the lines just above it


async def _with_last_words(ctx: AgentContext, cause: str) -> str:
    """The cause with what the dead pane shows last (remain-on-exit keeps its screen): "the
    assistant exited with status 1: Unable to connect to Anthropic services / ..."."""
    if SESSION_GONE in cause:
        return cause
    try:
        # with the lines above the screen: tmux's "Pane is dead" line scrolls its top away
        screen = await asyncio.to_thread(
            ctx.tmux.capture, ctx.state.tmux_session, AGENT_WINDOW, _DEAD_SCREEN_LINES, True
        )
    except (SessionMissing, TmuxFailed):
        return cause
    words = last_words(screen)
    return f"{cause}: {words}" if words else cause


async def refuse_dead_pane(ctx: AgentContext) -> None:
    """Before input is typed (the caller holds the agent's lock): a dead agent window is
    recorded as ERROR and the input refused, even before the monitor's next period."""
    if ctx.state.lifecycle is not Lifecycle.RUNNING:
        return  # the decider refuses input outside RUNNING with its own sentence
    monitor = ctx.monitor
    if monitor is not None and monitor.pane_seen_alive():
        return
    exited = monitor is not None and monitor.pane_seen_exited()
    deadline = time.monotonic() + UNREAPED_S
    while True:
        dead, cause, _ = await asyncio.to_thread(pane_death, ctx.tmux, ctx.state.tmux_session)
        if dead or not exited:
            break
        if time.monotonic() >= deadline:  # exited, and tmux does not say so: dead all the same
            cause = "the agent window's process exited"
            break
        await asyncio.sleep(0.05)  # exited a moment ago: tmux is about to reap it
    if not dead and not exited:
        return
    cause = await _with_last_words(ctx, cause)
    await ctx.fail(cause)
    raise PaneDead(ctx.state.agent_id, cause)

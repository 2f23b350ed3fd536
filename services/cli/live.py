"""`fleet ls --watch` and `fleet top`: live views from one list, then the event stream.

The fleet is listed once (`fleet.ctl.list`); from then on each agent's state is kept by
folding the events stored in FLEET_EVENTS with the domain's own `evolve`, and `top` adds
the health service's samples from `fleet.health.*` (one `fleet.ctl.health` per agent first).
Nothing is polled. Events that arrive while the list is in flight are held and applied after
it; an event no newer than the state it would change (`at` <= the state's `updated_at`) was
already folded into the list and is skipped. The events come from the stream (an ordered
consumer from what is stored next), not a core subscription, which would also show an append
that JetStream refused; each is checked with the fleet key of the state dir (Fleet-Mac and
chain, infra/eventfollow.py), and one that does not verify is refused: not folded, logged, and
named under the frame.

On a terminal a frame is redrawn in place on the alternate screen (as `watch` and `htop` do)
and the last one is printed on the normal screen at Ctrl-C, which exits 0. Elsewhere each
frame that differs from the previous one is printed, followed by a blank line. `--interval`
is the least time between two frames; changes in between are drawn together.

This is the engine and `ls --watch`; `top`'s rows and table are in services/cli/top.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from infra import fleetkey
from infra.config import Settings
from infra.eventfollow import LiveCheck, read_stream
from infra.eventscan import EventReader
from schemas import events as e
from schemas import subjects
from schemas.agent import AgentState, evolve, initial
from schemas.control import AgentView, ListRequest, state_of
from schemas.errors import FleetError, RemoteError
from schemas.eventcheck import Refusal
from schemas.health import HealthRequest, Observation, Sample
from schemas.states import LIVE
from schemas.wire import AgentsReply, Fields
from services.cli import style
from services.cli.client import FleetClient, open_client

ALIVE_CHECK_S = 1.0  # how often a quiet live view checks that its connection is still there
HEALTH_TIMEOUT_S = 2.0  # a node's health service answers only for its own agents
ALT_SCREEN_ON, ALT_SCREEN_OFF, HOME = "\x1b[?1049h", "\x1b[?1049l", "\x1b[H"

_event_decoder = msgspec.json.Decoder(e.AgentEvent)
_observation_decoder = msgspec.json.Decoder(Observation)


class LiveFleet:
    """The agents as the live views show them; `changed` is set whenever something moved."""

    def __init__(self, include_removed: bool = False) -> None:
        self.include_removed = include_removed
        self.states: dict[str, AgentState] = {}
        self.samples: dict[str, Sample] = {}
        self.changed = asyncio.Event()
        self._held: list[e.AgentEvent] | None = []  # events seen before the list came
        self.refused: list[Refusal] = []  # events that did not verify (not folded)

    def load(self, views: list[AgentView]) -> None:
        self.states = {v.id: state_of(v) for v in views}
        held, self._held = self._held or [], None
        for event in held:
            self.apply(event)
        self.changed.set()

    def apply(self, event: e.AgentEvent) -> bool:
        """Fold one event in; return whether it changed anything."""
        if self._held is not None:
            self._held.append(event)
            return False
        old = self.states.get(event.agent_id) or initial(event.agent_id)
        if old.updated_at is not None and event.at <= old.updated_at:
            return False  # already in the listed state
        self.states[event.agent_id] = evolve(old, event)
        self.changed.set()
        return True

    def observe(self, obs: Observation) -> bool:
        if obs.kind != "sample" or obs.sample is None:
            return False
        self.samples[obs.agent] = obs.sample
        self.changed.set()
        return True

    def shown(self) -> list[AgentState]:
        """The agents to show, by id (removed ones only when asked)."""
        return [s for _, s in sorted(self.states.items()) if self.include_removed or not s.removed]


# -- frames ---------------------------------------------------------------------------------

LS_HEADERS = ["ID", "LIFECYCLE", "ACTIVITY", "TEMPLATE", "BRANCH", "WORKTREE"]


def ls_rows(fleet: LiveFleet) -> list[list[str]]:
    return [
        [s.agent_id, s.lifecycle.value, shown_activity(s), s.template, s.branch, s.worktree]
        for s in fleet.shown()
    ]


def shown_activity(s: AgentState) -> str:
    """An agent's activity for a person: none ("-") once it is stopped or failed, whose
    screen is gone ("ERROR READY" read as an error that is ready for work)."""
    return s.activity.value if s.lifecycle in LIVE else "-"


def ls_frame(fleet: LiveFleet, paint: style.Painter) -> str:
    rows = ls_rows(fleet)
    if not rows:
        return "no agents (fleet spawn starts one)"
    return style.table(LS_HEADERS, rows, paint=paint, coloured=frozenset({1, 2}))


def ls_json(fleet: LiveFleet) -> str:
    rows = [
        {
            "id": s.agent_id,
            "lifecycle": s.lifecycle.value,
            "activity": s.activity.value,
            "activity_detail": s.activity_detail,
            "reason": s.reason,
            "template": s.template,
            "branch": s.branch,
            "worktree": s.worktree,
        }
        for s in fleet.shown()
    ]
    return msgspec.json.encode(rows).decode()


# -- feeding the fleet ----------------------------------------------------------------------


async def follow(client: FleetClient, fleet: LiveFleet, *, health: bool) -> list[Subscription]:
    """Subscribe to every agent's events (and health observations), then list the fleet.

    Subscribed before the list is asked for, so nothing that happens in between is missed.
    Returns the subscriptions, to be ended by the caller.
    """

    async def refused(refusal: Refusal) -> None:
        fleet.refused.append(refusal)
        fleet.changed.set()

    key = fleetkey.load_if_present(Settings.from_env().state_dir)
    if key is None:
        print("fleet: no fleet key in the state dir; events are shown unverified", file=sys.stderr)
    check = LiveCheck(EventReader(client.nc, mac_key=key), "live view", on_refused=refused)

    async def on_event(msg: Msg) -> None:
        try:
            if not await check.passes_msg(msg):
                return
        except Exception as err:  # noqa: BLE001 (the chain could not be read: not shown)
            print(f"fleet: an event of {msg.subject} was not checked: {err}", file=sys.stderr)
            return
        # A tag this CLI does not know yet is skipped; `fleet events` shows it as unreadable.
        with contextlib.suppress(msgspec.DecodeError):
            fleet.apply(_event_decoder.decode(msg.data))

    async def on_health(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            fleet.observe(_observation_decoder.decode(msg.data))

    subs = [await read_stream(client.nc.jetstream(), on_event, from_start=False)]
    if health:
        subs.append(await client.nc.subscribe(subjects.ALL_HEALTH, cb=on_health))
    await client.nc.flush()
    await load(client, fleet, health=health)
    return subs


async def load(client: FleetClient, fleet: LiveFleet, *, health: bool) -> None:
    reply = await client.control("list", ListRequest(removed=fleet.include_removed), AgentsReply)
    fleet.load(reply.agents)
    if health:
        await asyncio.gather(*(_last_sample(client, fleet, a) for a in list(fleet.states)))


async def _last_sample(client: FleetClient, fleet: LiveFleet, agent_id: str) -> None:
    """The health service's latest sample of one agent, if it has one and answers in time."""
    req = HealthRequest(agent=agent_id, limit=1, kind="sample")
    try:
        reply = await client.control("health", req, Fields, timeout=HEALTH_TIMEOUT_S)
    except RemoteError:
        return  # no health service, not this node's agent, or not sampled yet: shown as "-"
    for row in reply.get("history") or []:
        with contextlib.suppress(msgspec.ValidationError):
            obs = msgspec.convert(row, Observation)
            if agent_id not in fleet.samples:  # a live sample may already be newer
                fleet.observe(obs)


# -- drawing --------------------------------------------------------------------------------


class Screen:
    """Where frames go: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, in_place: bool) -> None:
        self.in_place = in_place
        self.last = ""

    def __enter__(self) -> Screen:
        if self.in_place:
            sys.stdout.write(ALT_SCREEN_ON + style.HIDE_CURSOR)
        return self

    def show(self, frame: str) -> None:
        if frame == self.last:
            return
        self.last = frame
        if self.in_place:
            sys.stdout.write(HOME + style.CLEAR_DOWN + frame + "\n")
        else:
            sys.stdout.write(frame + "\n\n")
        sys.stdout.flush()

    def __exit__(self, *exc: object) -> None:
        if self.in_place:  # back to the normal screen, and leave the last frame on it
            sys.stdout.write(style.SHOW_CURSOR + ALT_SCREEN_OFF + self.last + "\n")
            sys.stdout.flush()


async def redraw(
    fleet: LiveFleet, screen: Screen, render: Callable[[], str], interval: float,
    connected: Callable[[], bool] = lambda: True,
) -> None:  # fmt: skip
    """Draw a frame after each change, at most one per `interval` seconds; until cancelled.

    A view whose connection is gone would show a stale fleet as if live: it ends instead.
    """
    drawn_at = -interval
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.changed.wait(), ALIVE_CHECK_S)
        if not connected():
            raise RemoteError("disconnected", "lost the connection to NATS; is fleetd still up?")
        if not fleet.changed.is_set():
            continue
        await asyncio.sleep(max(0.0, drawn_at + interval - time.monotonic()))
        fleet.changed.clear()
        screen.show(render())
        drawn_at = time.monotonic()


def _refusals(fleet: LiveFleet) -> str:
    """Under the frame: how many events were refused, and the last one's sentence."""
    if not fleet.refused:
        return ""
    n = len(fleet.refused)
    return f"\n{n} event(s) refused, not shown; the last: {fleet.refused[-1].sentence()}"


def _headline(title: str, interval: float) -> str:
    now = datetime.now().strftime("%H:%M:%S")
    return f"{title}  every {interval:g} s, Ctrl-C quits  {now}\n"


async def watch(args: argparse.Namespace, render: Callable[[LiveFleet, bool], str], *,
                health: bool, title: str) -> int:  # fmt: skip
    """Run a live view until interrupted: `render(fleet, on_terminal)` makes a frame."""
    fleet = LiveFleet(include_removed=getattr(args, "all", False))
    in_place = not args.json and style.is_terminal(sys.stdout)
    async with open_client() as client:
        subs = await follow(client, fleet, health=health)
        try:
            with Screen(in_place) as screen:

                def frame() -> str:
                    body = render(fleet, in_place) + ("" if args.json else _refusals(fleet))
                    return _headline(title, args.interval) + body if in_place else body

                await redraw(fleet, screen, frame, args.interval, lambda: client.nc.is_connected)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
    return 0


def run_until_interrupted(coro: Any) -> int:
    """Ctrl-C is how a live view ends, so it is exit status 0, not 130."""
    try:
        status: int = asyncio.run(coro)
    except KeyboardInterrupt:
        return 0
    return status


def check_interval(value: float) -> float:
    if not value > 0:
        raise FleetError(f"--interval must be more than 0 seconds, not {value:g}")
    return value


# -- the command ----------------------------------------------------------------------------


def ls_watch(args: argparse.Namespace) -> int:
    """`fleet ls --watch`: the `ls` table, kept up to date from the event stream."""
    check_interval(args.interval)
    paint = style.painter(style.color_wanted(sys.stdout, no_color=args.no_color))

    def render(fleet: LiveFleet, on_terminal: bool) -> str:
        return ls_json(fleet) if args.json else ls_frame(fleet, paint)

    return run_until_interrupted(watch(args, render, health=False, title="fleet ls --watch"))

"""`fleet events`: an agent's log as lines (`seq time type summary`), read from JetStream.

The log is read with `EventStore.read`, so no actor needs to be up. `--follow` subscribes to
the agent's subject with a plain (core) subscription, used only as a wake-up: what is printed
is always re-read from the stream after the last printed sequence. So a message that JetStream
refused (a stale writer's append) never shows, and each stored event shows once with its
stream sequence, which a core message does not carry. With the fleet key in the state dir, an
event that does not verify (Fleet-Mac, chain) is not printed as an event: stderr says which
and why (`fleet audit --verify` gives the whole account).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from infra import fleetkey
from infra.config import Settings
from infra.eventscan import Stored
from infra.eventstore import EventStore
from infra.nats import connect
from schemas import events as e
from schemas import subjects
from schemas.errors import UnknownAgent
from schemas.eventcheck import Refusal
from services.cli.client import nats_url

FOLLOW_RECHECK_S = 2.0  # re-read even without a wake-up, in case one was lost


def summary(event: e.AgentEvent) -> str:
    """What an event says, in a few words."""
    match event:
        case e.AgentCreated():
            return f"{event.template} in {event.repo} from {event.base_ref} on {event.branch}"
        case e.LifecycleChanged() | e.ActivityChanged():
            text = f"{event.frm.value} -> {event.to.value}"
            extra = event.reason if isinstance(event, e.LifecycleChanged) else event.detail
            return f"{text} ({extra})" if extra else text
        case e.WorkspaceReady():
            return f"{event.path} ({event.branch} at {event.head[:10]})"
        case e.WorkspaceRemoved():
            return event.path + (f", work saved to {event.saved_ref}" if event.saved_ref else "")
        case e.SessionStarted() | e.SessionClosed():
            return f"tmux -L {event.socket} {event.session}"
        case e.PortsLeased() | e.PortsReleased():
            return " ".join(f"{k}={v}" for k, v in event.ports.items())
        case e.ServiceStarted() | e.ServiceExited() | e.ServiceHealth() | e.ServiceRestarted():
            return _service(event)
        case e.RecoveryEscalated():
            return f"{event.rung} (attempt {event.attempt}) {event.reason}".rstrip()
        case e.ResourcesExceeded():
            return f"{event.resource} {event.value:g} > {event.limit:g} ({event.action})"
        case e.CheckpointTaken():
            return f"#{event.checkpoint} at seq {event.log_seq}: {event.commit[:10]} {event.label}"
        case e.RolledBack():
            return f"to checkpoint #{event.checkpoint} (seq {event.to_seq}, {event.commit[:10]})"
        case e.InputSent():
            keys = " ".join(event.keys)
            return " ".join(x for x in (repr(event.text) if event.text else "", keys) if x)
        case e.UserAttached() | e.UserDetached():
            return event.user
        case e.AgentRemoved():
            return event.reason
    return ""


def _service(
    event: e.ServiceStarted | e.ServiceExited | e.ServiceHealth | e.ServiceRestarted,
) -> str:
    match event:
        case e.ServiceStarted(port=port):
            return f"{event.service} pid {event.pid}" + (f" port {port}" if port else "")
        case e.ServiceExited(code=code, signal=sig):
            how = f"signal {sig}" if sig else f"status {code}"
            return f"{event.service} pid {event.pid} {how}"
        case e.ServiceHealth():
            return f"{event.service} {'healthy' if event.healthy else 'unhealthy'} {event.detail}"
        case e.ServiceRestarted():
            return f"{event.service} attempt {event.attempt} after {event.delay_s:.1f} s"


def _when(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def event_line(stored: Stored) -> str:
    if stored.event is None:
        return f"{stored.seq:>6}  {'?':<19}  {'?':<17}  unreadable: {stored.problem}"
    tag = type(stored.event).__struct_config__.tag
    return f"{stored.seq:>6}  {_when(stored.event.at)}  {tag:<17}  {summary(stored.event)}".rstrip()


def event_json(stored: Stored) -> dict[str, Any]:
    """The stored event as it is on the wire, with its stream sequence beside its fields."""
    try:
        raw = msgspec.json.decode(stored.raw)
    except msgspec.DecodeError:
        raw = None
    if stored.event is None or not isinstance(raw, dict):
        return {"seq": stored.seq, "problem": stored.problem, "raw": stored.raw.decode("replace")}
    return {"seq": stored.seq, **raw}


def _print(rows: list[Stored], as_json: bool) -> None:
    for stored in rows:
        if as_json:
            print(msgspec.json.encode(event_json(stored)).decode())
        else:
            print(event_line(stored))
    if rows:
        sys.stdout.flush()


def _said(refused: list[Refusal], rows: list[Stored], last: int) -> int:
    """Say what was refused (stderr); the last sequence read, refused or not."""
    for refusal in refused:
        print(f"fleet: {refusal.sentence()}", file=sys.stderr)
    return max([last, *(r.seq for r in rows), *(r.seq for r in refused)])


async def print_events(agent_id: str, follow: bool, as_json: bool) -> int:
    """Print the log; with `follow`, keep printing what is appended until interrupted."""
    subject = subjects.events(agent_id)
    settings = Settings.from_env()
    nc = await connect(nats_url(settings), name="fleet-cli", reconnect=False)
    try:
        # With the fleet key (the state dir's), an event that does not verify is not printed
        # as one: a line on stderr says which and why.
        store = EventStore(nc, mac_key=fleetkey.load_if_present(settings.state_dir))
        wake = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            wake.set()

        if follow:  # subscribed before the first read, so nothing appended between is missed
            await nc.subscribe(subject, cb=on_msg)
            await nc.flush()
        rows, refused = await store.read_checked(agent_id, reader="fleet events")
        if not rows and not refused and not follow:
            raise UnknownAgent(agent_id)
        if store.mac_key is None and rows:
            print("fleet: no fleet key in the state dir; events shown unverified", file=sys.stderr)
        _print(rows, as_json)
        last = _said(refused, rows, 0)
        while follow:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), FOLLOW_RECHECK_S)
            wake.clear()
            rows, refused = await store.read_checked(agent_id, after=last, reader="fleet events")
            _print(rows, as_json)
            last = _said(refused, rows, last)
        return 0
    finally:
        await nc.close()

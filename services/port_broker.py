"""The ports service: port leases in KV `fleet_ports`, answered on `fleet.ctl.ports`.

Protocol facts this module relies on:
- A lease is the key `<port>`; `kv.create` writes it only if it does not exist (it publishes
  with `Nats-Expected-Last-Subject-Sequence: 0`, or the tombstone's sequence after a delete),
  so two ports services racing for one port get one success and one error 10071: a port is
  never handed to two agents.
- A release is `kv.delete` with the lease's last revision: a lease that was renewed or taken
  again meanwhile is left alone (error 10071 again).

Before a port is offered it must bind on 0.0.0.0 and 127.0.0.1 (SO_REUSEADDR, as servers set
it), so a port some foreign process listens on is skipped. Leases are given back when an
agent's events say it stopped or was removed (a durable consumer on every agent's log), and
leases of agents that no longer exist are reclaimed at start and every `reclaim_every_s`.
What to release is judged against the agent's current state, never the old event alone, so a
replayed `stopped` cannot take the ports of an agent that was restarted since.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from infra import kvscan
from infra.eventscan import Stored
from infra.eventstore import EventStore
from infra.responder import serve
from schemas import events as e
from schemas import replies, subjects
from schemas.agent import AgentState
from schemas.errors import BadRequest, FleetError, PortsExhausted
from schemas.ports import Lease, LeasePorts, ListLeases, PortsOp, ReleasePorts
from schemas.states import Lifecycle

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream: the key moved on since the revision we read
DURABLE = "ports"
CLOSE_TIMEOUT_S = 5.0
_decoder = msgspec.json.Decoder(Lease)
_encode = msgspec.json.Encoder().encode

Held = dict[int, tuple[Lease, int]]  # port -> (lease, KV revision)


def port_free(port: int) -> bool:
    """True when a server could listen on `port` now (on all addresses and on loopback)."""
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _check_names(agent: str, names: tuple[str, ...]) -> None:
    subjects.token(agent)
    for name in names:
        service, dot, port = name.partition(".")
        if not dot:
            raise BadRequest(f"lease name {name!r} must be <service>.<port name>", "invalid_name")
        subjects.token(service, "service name")
        subjects.token(port, "port name")


@dataclass
class PortLeaser:
    """Hands out ports of [low, high] by compare-and-set in KV; one per instance of the service."""

    kv: KeyValue
    js: JetStreamContext
    low: int
    high: int
    holder: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    is_free: Callable[[int], bool] = port_free
    known: Held = field(default_factory=dict)  # a mirror of the bucket (a hint; KV decides)
    _cursor: int = -1

    def __post_init__(self) -> None:
        # Each instance starts at its own place, so instances racing rarely want one port.
        self._cursor = random.randint(self.low, self.high)

    async def lease(self, agent: str, names: tuple[str, ...]) -> dict[str, int]:
        """A port per name; a name the agent already holds keeps its port (renewed)."""
        _check_names(agent, names)
        held = {lease.name: (port, rev) for port, (lease, rev) in self._of(agent).items()}
        got: dict[str, int] = {}
        made: list[int] = []
        try:
            for name in dict.fromkeys(names):
                if name in held and await self._renew(agent, name, *held[name]):
                    got[name] = held[name][0]
                    continue
                port = await self._take(agent, name, len(names))
                made.append(port)
                got[name] = port
        except Exception:
            for port in made:  # all or nothing
                await self._delete(port, self.known.get(port, (None, 0))[1])
            raise
        return got

    async def _take(self, agent: str, name: str, wanted: int) -> int:
        lease = Lease(agent=agent, name=name, at=datetime.now(UTC), holder=self.holder)
        for _ in range(self.high - self.low + 1):
            port = self._next()
            if port in self.known or not self.is_free(port):
                continue
            try:
                rev = await self.kv.create(str(port), _encode(lease))
            except KeyWrongLastSequenceError:
                continue  # another instance leased it first
            self.known[port] = (lease, rev)
            return port
        raise PortsExhausted(agent, self.low, self.high, wanted)

    async def _renew(self, agent: str, name: str, port: int, rev: int) -> bool:
        """Rewrite a held lease (a new revision and time), so a release judged before it fails."""
        lease = Lease(agent=agent, name=name, at=datetime.now(UTC), holder=self.holder)
        try:
            new_rev = await self.kv.update(str(port), _encode(lease), last=rev)
        except KeyWrongLastSequenceError:
            return False
        self.known[port] = (lease, new_rev)
        return True

    def _next(self) -> int:
        self._cursor = self.low if self._cursor >= self.high else self._cursor + 1
        return self._cursor

    def _of(self, agent: str) -> Held:
        return {p: v for p, v in self.known.items() if v[0].agent == agent}

    async def release(
        self,
        agent: str,
        names: tuple[str, ...] = (),
        keep: Callable[[Lease, int], bool] | None = None,
    ) -> dict[str, int]:
        """Delete the agent's leases (those named, or all) that `keep` does not keep."""
        released: dict[str, int] = {}
        for port, (lease, rev) in (await self.scan()).items():
            if lease.agent != agent or (names and lease.name not in names):
                continue
            if keep is not None and keep(lease, port):
                continue
            if await self._delete(port, rev):
                released[lease.name] = port
        return released

    async def _delete(self, port: int, rev: int) -> bool:
        try:
            await self.kv.delete(str(port), last=rev)
        except APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE:
                return False  # renewed or taken again since we read it
            raise
        self.known.pop(port, None)
        return True

    async def scan(self) -> Held:
        """Every lease in the bucket now, read afresh (a release must not trust the mirror)."""
        found: Held = {}
        for row in await kvscan.rows(self.js, subjects.PORTS_BUCKET):
            lease = _lease_of(row.key, row.value)
            if lease is not None:
                found[lease[0]] = (lease[1], row.revision)
        return found

    async def mirror(self, watcher: KeyValue.KeyWatcher) -> None:
        """Follow the bucket, so `lease` skips ports others took without asking KV."""
        async for entry in watcher:
            if entry is None or not entry.key.isdigit():
                continue
            port, rev = int(entry.key), entry.revision or 0
            if self.known.get(port, (None, 0))[1] > rev:
                continue  # we wrote a newer revision ourselves already
            lease = _lease_of(entry.key, entry.value) if entry.operation is None else None
            if lease is not None:
                self.known[port] = (lease[1], rev)
            else:
                self.known.pop(port, None)


def _lease_of(key: str, value: bytes | None) -> tuple[int, Lease] | None:
    """A lease from a bucket entry; None (logged) for a key that is no lease of ours."""
    if not key.isdigit() or not value:
        return None
    try:
        return int(key), _decoder.decode(value)
    except msgspec.DecodeError as err:
        log.warning("%s: key %s is not a lease (%s); left alone", subjects.PORTS_BUCKET, key, err)
        return None


def stale_rule(state: AgentState, grace_s: float) -> Callable[[Lease, int], bool] | None:
    """Which leases of an agent in `state` to keep: None (keep none) for an agent that stopped
    or was removed; else the ones its state records, and any leased within `grace_s` (an
    actor leases first and records `ports.leased` a moment later; a lease for an agent with no
    log at all is kept that long too, then reclaimed as an orphan)."""
    if state.lifecycle is Lifecycle.STOPPED or state.removed:
        return None
    since = datetime.now(UTC) - timedelta(seconds=grace_s)

    def keep(lease: Lease, port: int) -> bool:
        return state.ports.get(lease.name) == port or lease.at > since

    return keep


@dataclass
class PortsService:
    leaser: PortLeaser
    store: EventStore
    grace_s: float = 10.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sub: Subscription | None = None
    node_sub: Subscription | None = None  # `fleet.ctl.ports.<node>`: leases bound on this node
    watcher: KeyValue.KeyWatcher | None = None

    async def handle(self, data: bytes) -> bytes:
        req: PortsOp = replies.decode_request(data, PortsOp, "ports request")
        match req:
            case LeasePorts(agent=agent, names=names):
                return replies.ok(ports=await self.leaser.lease(agent, names))
            case ReleasePorts(agent=agent, names=names):
                return replies.ok(released=await self.leaser.release(agent, names))
            case ListLeases(agent=agent):
                rows = [
                    {"port": port, **msgspec.to_builtins(lease)}
                    for port, (lease, _) in sorted((await self.leaser.scan()).items())
                    if not agent or lease.agent == agent
                ]
                return replies.ok(leases=rows)
        raise FleetError(f"unhandled ports request {req!r}")  # pragma: no cover

    async def settle(self, agent: str) -> dict[str, int]:
        """Release what the agent's current state no longer needs; what was released."""
        loaded = await self.store.load(agent)
        keep = stale_rule(loaded.state, self.grace_s)
        released = await self.leaser.release(agent, keep=keep)
        if released:
            log.info("ports of agent %s released: %s", agent, released)
        return released

    async def reclaim(self) -> dict[str, dict[str, int]]:
        """Settle every agent that holds a lease (orphans of agents that no longer exist)."""
        agents = sorted({lease.agent for lease, _ in (await self.leaser.scan()).values()})
        done = {a: await self.settle(a) for a in agents}
        return {a: r for a, r in done.items() if r}

    async def on_event(self, stored: Stored) -> None:
        match stored.event:
            case e.LifecycleChanged(to=Lifecycle.STOPPED) | e.AgentRemoved() | e.PortsReleased():
                await self.settle(stored.event.agent_id)
            case _:
                pass

    async def _reclaim_every(self, period_s: float) -> None:
        while not self.stop.is_set():
            try:
                await self.reclaim()
            except (FleetError, APIError, TimeoutError):
                log.exception("reclaiming orphaned port leases failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), period_s)

    async def close(self) -> None:
        self.stop.set()
        for sub in (self.sub, self.node_sub):
            if sub is not None:
                await sub.unsubscribe()
        self.sub = self.node_sub = None
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=CLOSE_TIMEOUT_S)
        if self.watcher is not None:
            await self.watcher.stop()  # type: ignore[no-untyped-call]  # nats-py's, unannotated
            self.watcher = None


async def start(
    nc: Client,
    port_range: tuple[int, int],
    *,
    durable: str = DURABLE,
    reclaim_every_s: float = 30.0,
    grace_s: float = 10.0,
    follow: bool = True,
    node: str = "",
    fleet_wide: bool = True,
    mac_key: bytes | None = None,
) -> PortsService:
    """Serve `fleet.ctl.ports`, follow the events and reclaim orphans; `close()` stops it all.

    With a Ray `node`, also serve `fleet.ctl.ports.<node>`, which the agents of that node ask,
    so the bind that checks a port happens where the agent's services will listen. The
    service of another node serves only that (`fleet_wide=False`, usually `follow=False`).
    With the fleet key (`mac_key`), an event that does not verify is refused: a forged stop
    releases no port."""
    kv = await nc.jetstream().key_value(subjects.PORTS_BUCKET)
    leaser = PortLeaser(kv, nc.jetstream(), *port_range)
    if node:
        leaser.holder = f"{node[:12]}-{leaser.holder}"
    service = PortsService(leaser, EventStore(nc, mac_key=mac_key), grace_s=grace_s)
    leaser.known = await leaser.scan()
    spawn = asyncio.get_running_loop().create_task
    service.watcher = await kv.watchall()
    service.tasks.append(spawn(leaser.mirror(service.watcher)))
    if follow:
        service.tasks.append(spawn(service._reclaim_every(reclaim_every_s)))
        service.tasks.append(
            spawn(service.store.follow(durable, service.on_event, stop=service.stop))
        )
    if fleet_wide:
        service.sub = await serve(nc, subjects.control("ports"), service.handle, "ports")
    if node:
        subject = subjects.node_control("ports", node)
        service.node_sub = await serve(nc, subject, service.handle, "ports")
    return service

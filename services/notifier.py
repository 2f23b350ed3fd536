"""The notifications service: events and notices -> rules -> channels, with dedupe, a rate
limit per channel and retries with backoff.

Inputs: the event log through `EventStore.follow` (durable "notifications"), and notices other
services publish on `fleet.notify.<severity>` (the health service's ask_human, mail dead
letters, the gateway's Alertmanager receiver). The `bus` channel publishes on the same subjects
for UIs, marked with the `Fleet-Notified` header so this service does not read its own notices.

Channels: `webhook` (Slack- and Discord-compatible JSON, `{"text": ..., "content": ...}`),
`ntfy` (a POST to a topic URL, with Title and Priority headers), `desktop` (`notify-send`),
`log` (one JSON line per notice), `bus`. Configuration: `<state_dir>/notifications.yaml`
(channels, rules, limits); without it, the log file, the bus and (where present) the desktop.

The log is read with the fleet key: an event that does not verify (its Fleet-Mac or its place
in the agent's chain, infra/eventfollow.py) is never turned into a notice of what it claims;
it is refused, and the refusal itself is a critical notice (`log.refused`) naming the agent,
the sequence and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra import fleetkey
from infra.config import Settings
from infra.eventscan import Stored
from infra.eventstore import EventStore
from schemas import subjects
from schemas.errors import FleetError, RateLimited
from schemas.eventcheck import Refusal
from schemas.notify import DEFAULT_RULES, Dedupe, Notice, Rule, channels_for, classify, from_bus
from schemas.notify import is_stale as too_old
from schemas.ratelimit import RateLimiter
from services.metrics import FleetMetrics

log = logging.getLogger(__name__)

CONFIG_FILE = "notifications.yaml"
NOTIFIED_HEADER = "Fleet-Notified"  # set on what the bus channel publishes: not read back
DURABLE = "notifications"
_encode = msgspec.json.Encoder().encode


class Webhook(msgspec.Struct, frozen=True, kw_only=True, tag="webhook"):
    url: str


class Ntfy(msgspec.Struct, frozen=True, kw_only=True, tag="ntfy"):
    url: str  # the topic URL, e.g. https://ntfy.sh/my-fleet


class Desktop(msgspec.Struct, frozen=True, kw_only=True, tag="desktop"):
    command: str = "notify-send"


class LogFile(msgspec.Struct, frozen=True, kw_only=True, tag="log"):
    path: str


class Bus(msgspec.Struct, frozen=True, kw_only=True, tag="bus"):
    pass


Channel = Webhook | Ntfy | Desktop | LogFile | Bus


class NotifyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    channels: dict[str, Channel] = {}
    rules: tuple[Rule, ...] = DEFAULT_RULES
    dedupe_s: float = 60.0
    rate_per_minute: float = 30.0  # per channel, after a burst of `burst`
    burst: int = 10
    retries: int = 3  # attempts after the first
    backoff_s: float = 0.5  # doubled after each attempt
    timeout_s: float = 10.0
    max_age_s: float = 600.0  # older events (history read at first start) are not notified


def default_config(settings: Settings) -> NotifyConfig:
    channels: dict[str, Channel] = {
        "log": LogFile(path=str(settings.state_dir / "notifications.log")),
        "bus": Bus(),
    }
    if shutil.which("notify-send"):
        channels["desktop"] = Desktop()
    return NotifyConfig(channels=channels)


def load_config(settings: Settings) -> NotifyConfig:
    """`<state_dir>/notifications.yaml` if it exists, else the defaults; errors name the field."""
    path = settings.state_dir / CONFIG_FILE
    if not path.exists():
        return default_config(settings)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return msgspec.convert(data, NotifyConfig)
    except (yaml.YAMLError, msgspec.ValidationError) as e:
        raise FleetError(f"{path} cannot be used: {e}") from e


class DeliveryFailed(Exception):
    pass


class Notifier:
    """Routes notices to channels. `notify` returns once deliveries are started, not done."""

    def __init__(
        self,
        config: NotifyConfig,
        nc: Client | None = None,
        metrics: FleetMetrics | None = None,
    ) -> None:
        self.config, self.nc = config, nc
        self.metrics = metrics or FleetMetrics()
        self.dedupe = Dedupe(config.dedupe_s)
        self.limiter = RateLimiter(config.rate_per_minute / 60.0, config.burst, "notifications")
        self.http: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_event(self, stored: Stored) -> None:
        if stored.event is not None:
            await self.notify(classify(stored.event))

    async def refused(self, refusal: Refusal) -> None:
        """An event of the log that does not verify: said as what it is, never as what it says."""
        message = (
            f"{refusal.sentence()}. It was not acted on; `fleet audit --verify"
            f" {refusal.agent_id}` shows the log"
        )
        notice = Notice(
            kind="log.refused",
            severity="critical",
            message=message,
            agent_id=refusal.agent_id,
            source="notifications",
            at=datetime.now(UTC),
        )
        await self.notify(notice)

    async def notify(self, notice: Notice) -> list[str]:
        """Send `notice` to the channels its rules name; returns those channel names."""
        every = tuple(self.config.channels)
        names = channels_for(notice, self.config.rules, every)
        if not names:
            return []
        if too_old(notice, datetime.now(UTC), timedelta(seconds=self.config.max_age_s)):
            log.debug("notice about an old event not sent: %s", notice.message)
            return []
        if not self.dedupe.first(notice, time.monotonic()):
            return []
        for name in names:
            channel = self.config.channels.get(name)
            if channel is None:
                log.warning("rule names channel %r, which is not configured", name)
                continue
            try:
                self.limiter.check(name, time.monotonic())
            except RateLimited:
                self.metrics.notify_failed.labels(name, "rate_limited").inc()
                log.warning("channel %s is over its rate limit; dropped: %s", name, notice.message)
                continue
            task = asyncio.create_task(self._deliver(name, channel, notice))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return names

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests, and a clean stop)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def _deliver(self, name: str, channel: Channel, notice: Notice) -> None:
        delay = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            try:
                await self._send(channel, notice)
                self.metrics.notified.labels(name).inc()
                return
            except (DeliveryFailed, aiohttp.ClientError, OSError, TimeoutError) as e:
                if attempt == self.config.retries:
                    self.metrics.notify_failed.labels(name, "error").inc()
                    log.warning(
                        "notification to %s failed after %d attempts: %s", name, attempt + 1, e
                    )
                    return
                await asyncio.sleep(delay)
                delay *= 2

    async def _send(self, channel: Channel, notice: Notice) -> None:
        match channel:
            case Webhook(url=url):
                text = _line(notice)
                await self._post(
                    url,
                    _encode({"text": text, "content": text[:2000]}),
                    {"Content-Type": "application/json"},
                )
            case Ntfy(url=url):
                headers = {
                    "Title": f"fleetd {notice.severity}: {notice.kind}",
                    "Priority": _NTFY_PRIORITY.get(notice.severity, "default"),
                    "Tags": notice.severity,
                }
                await self._post(url, notice.message.encode(), headers)
            case Desktop(command=command):
                await _desktop(command, notice)
            case LogFile(path=path):
                line = _encode(notice) + b"\n"
                await asyncio.to_thread(_append, Path(path), line)
            case Bus():
                if self.nc is None:
                    raise DeliveryFailed("no NATS connection for the bus channel")
                await self.nc.publish(
                    subjects.notify(notice.severity),
                    _encode(notice),
                    headers={NOTIFIED_HEADER: "1"},
                )

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
            )
        async with self.http.post(url, data=body, headers=headers) as r:
            if r.status >= 300:
                raise DeliveryFailed(f"{url} answered {r.status}")

    async def close(self) -> None:
        await self.drain()
        if self.http is not None:
            await self.http.close()


_NTFY_PRIORITY = {"critical": "urgent", "warning": "high", "info": "default"}
_ICON = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


def _line(notice: Notice) -> str:
    return f"{_ICON.get(notice.severity, '')} [{notice.severity}] {notice.message}".strip()


def _append(path: Path, line: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(line)


async def _desktop(command: str, notice: Notice) -> None:
    if shutil.which(command) is None:
        raise DeliveryFailed(f"{command} is not installed")
    urgency = {"critical": "critical", "warning": "normal"}.get(notice.severity, "low")
    proc = await asyncio.create_subprocess_exec(
        command,
        "-u",
        urgency,
        f"fleetd: {notice.kind}",
        notice.message,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise DeliveryFailed(f"{command} exited {proc.returncode}: {err.decode().strip()}")


def _on_notice(notifier: Notifier) -> Callable[[Msg], Awaitable[None]]:
    async def on_msg(msg: Msg) -> None:
        if msg.headers and NOTIFIED_HEADER in msg.headers:
            return  # published by our own bus channel
        try:
            data = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("a notice on %s is not JSON; ignored", msg.subject)
            return
        notice = from_bus(msg.subject.rpartition(".")[2], data, datetime.now(UTC))
        if notice is not None:
            await notifier.notify(notice)

    return on_msg


@contextlib.asynccontextmanager
async def running(
    settings: Settings, nc: Client, metrics: FleetMetrics | None = None
) -> AsyncIterator[Notifier]:
    """Run the service on `nc` (follow the log, forward notices) until the block ends."""
    notifier = Notifier(load_config(settings), nc, metrics)
    stop = asyncio.Event()
    sub = await nc.subscribe(subjects.ALL_NOTIFY, cb=_on_notice(notifier))
    store = EventStore(nc, mac_key=fleetkey.load_or_create(settings.state_dir))
    follower = asyncio.create_task(
        store.follow(DURABLE, notifier.handle_event, stop=stop, on_refused=notifier.refused)
    )
    try:
        yield notifier
    finally:
        stop.set()
        with contextlib.suppress(Exception):  # NATS may be gone already
            await sub.unsubscribe()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(follower, timeout=2.0)
        await notifier.close()

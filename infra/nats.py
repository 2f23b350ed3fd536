"""The NATS session: connect, and create the JetStream streams and KV buckets fleetd needs.

Creation is idempotent: every process calls `ensure_streams` at start, and a stream that
exists with an older configuration is updated in place, never recreated (that would drop
the log).

Limits that keep the disk (and no acknowledged event is ever dropped for them):
- FLEET_EVENTS: `discard=new` with `max_bytes` and a per-subject message limit
  (`discard_new_per_subject`): a full log, or a full store, refuses the next append with an
  error its writer (the agent's actor) reports; nothing already stored goes. Never
  `discard=old` here: that would delete the oldest history of live agents to make room.
- FLEET_MAIL: `discard=new` per subject (one agent's mailbox of one priority holds at most
  MAIL_MAX_PER_MAILBOX messages) and in all (MAIL_MAX_BYTES): mail to a full mailbox is
  refused to its sender with the store's reason (actors/supervisor/mailrelay.py says so in a
  sentence), never dropped from a mailbox to make room.
- FLEET_MAIL_DLQ: dead letters (copies of mail no one acknowledged) are bounded by bytes, the
  oldest dropped first: they are already failed deliveries, and the warning that reported
  each one stays in the notifications.

JetStream reserves a stream's `max_bytes` in its store when the stream is made (error 10047
"insufficient storage resources available" if the server's `max_file_store` has not that much
left), so a limit the server cannot reserve is halved until it can, down to MIN_STREAM_BYTES,
and said in a warning; below that the stream has no byte limit of its own and the store's size
is its limit (discard=new still refuses what does not fit). Mail is made before the events,
which take what is left. An existing stream whose limit cannot grow to the configured one
keeps its own: an update never makes it smaller.
"""

from __future__ import annotations

import logging
import random
import time

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from infra import natsimport
from infra.natsauth import without_userinfo
from schemas import subjects
from schemas.discovery import BUCKET_TTL_S
from schemas.errors import StoreUnavailable
from schemas.mail import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# JetStream API error code: "stream name already in use with a different configuration".
STREAM_NAME_IN_USE = 10058
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_BYTES = 8 * 1024**3
EVENTS_MAX_PER_AGENT = 1_000_000  # events in one agent's log
EVENT_MAX_BYTES = 1024 * 1024  # one event (the server's default max_payload)
MAIL_MAX_BYTES = 1024**3
MAIL_MAX_PER_MAILBOX = 100_000  # messages waiting in one (agent, priority)
DEAD_MAIL_MAX_BYTES = 256 * 1024**2
MIN_STREAM_BYTES = 64 * 1024**2
STORAGE_EXCEEDED = 10047  # JetStream API error: insufficient storage resources available
RECONNECT_FIRST_S = 0.25  # the wait after the first failed reconnect; it doubles from there
RECONNECT_MAX_S = 1.0


class _Reconnects:
    """Reconnects that stay cheap when a server is gone for a while.

    nats-py retries every `reconnect_time_wait` and hands each failure to the error callback,
    whose default logs a traceback. With 200 agent actors waiting for a restarted `fleet up`
    that is 800 tracebacks a second for Ray to carry to the driver's log, and it starved the
    restart itself (two minutes before the new `fleet up` got to run). Here an outage logs one
    line when it starts and one when it ends, and the wait doubles, with jitter so that a
    fleet of clients does not come back in step, up to RECONNECT_MAX_S. nats-py reads the
    wait from `options` before each attempt, so changing it there is how it is set.
    """

    def __init__(self, name: str, shown: str, *, loud: bool) -> None:
        self.name, self.shown, self.loud = name, shown, loud
        self.nc: Client | None = None
        self.failures = 0
        self.lost_at = 0.0

    async def on_error(self, e: Exception) -> None:
        if self.nc is None or not self.nc.is_reconnecting:
            # A one-shot client (the CLI) raises its own sentence for a failed connect.
            level = logging.WARNING if self.loud and self.nc is not None else logging.DEBUG
            log.log(level, "%s: NATS at %s: %s", self.name, self.shown, e or type(e).__name__)
            return
        self.failures += 1
        if self.failures == 1:
            log.warning("%s: NATS at %s unreachable (%r); retrying", self.name, self.shown, e)
        # The exponent stops growing once the wait is at its cap: 2.0**1100 overflows a float.
        wait = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(self.failures, 30))
        self.nc.options["reconnect_time_wait"] = wait * random.uniform(0.75, 1.25)

    async def on_disconnected(self) -> None:
        self.lost_at = time.monotonic()

    async def on_reconnected(self) -> None:
        if self.nc is not None:
            self.nc.options["reconnect_time_wait"] = RECONNECT_FIRST_S
        gone = time.monotonic() - self.lost_at if self.lost_at else 0.0
        log.warning(
            "%s: NATS at %s back after %.1f s (%d failed attempts)",
            self.name,
            self.shown,
            gone,
            self.failures,
        )
        self.failures = 0


class OneLineErrors(logging.Filter):
    """nats-py logs each lost connection with a traceback; it reconnects, so one line will do."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({record.exc_info[1]!r}); reconnecting"
            record.args, record.exc_info, record.levelno = None, None, logging.WARNING
            record.levelname = "WARNING"
        return True


_ONE_LINE = OneLineErrors()


def quiet_lost_connections() -> None:
    """Log nats-py's lost connections in one line each, from now on, in this process."""
    logging.getLogger("nats.aio.client").addFilter(_ONE_LINE)  # added once: the same filter


async def connect(
    url: str, name: str = "fleetd", *, reconnect: bool = True, inbox_prefix: str = ""
) -> Client:
    """Connect to NATS, or raise `StoreUnavailable` with the address that failed.

    `url` may list several servers, comma-separated (a cluster). With `reconnect`, a lost
    server is retried forever every 250 ms (the embedded server is restarted by `fleet up` on
    the same store), and publishes wait in nats-py's buffer. A user and password ride in the
    URL (`nats://user:pass@host:port`); `inbox_prefix` is an agent's reply inbox
    (infra/natsauth.py), the only one its permissions let it read.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: "nats://a,nats://b"
    natsimport.for_url(url)  # a ws:// server needs the aiohttp an actor imports nats-py without
    extra = {"inbox_prefix": inbox_prefix} if inbox_prefix else {}
    shown = without_userinfo(url)  # never print a password
    watch = _Reconnects(name, shown, loud=reconnect)
    try:
        watch.nc = await nats.connect(
            servers,
            name=name,
            connect_timeout=2,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1 if reconnect else 0,
            reconnect_time_wait=RECONNECT_FIRST_S,
            error_cb=watch.on_error,
            disconnected_cb=watch.on_disconnected,
            reconnected_cb=watch.on_reconnected,
            **extra,
        )
        return watch.nc
    except (OSError, TimeoutError, nats.errors.NoServersError) as e:
        raise StoreUnavailable(f"cannot reach NATS at {shown}: {e or type(e).__name__}") from e
    except nats.errors.Error as e:  # the server refused the user: 'Authorization Violation'
        raise StoreUnavailable(f"NATS at {shown} refused this client: {e}") from e


def events_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.ALL_EVENTS],
        storage=StorageType.FILE,
        num_replicas=replicas,
        allow_direct=True,  # loads read a snapshot's tail with a batch direct get
        duplicate_window=DUPLICATE_WINDOW_S,  # Nats-Msg-Id dedupe of retried appends
        discard=DiscardPolicy.NEW,  # never drop history to make room: refuse the write instead
        max_bytes=EVENTS_MAX_BYTES,
        max_msgs_per_subject=EVENTS_MAX_PER_AGENT,
        discard_new_per_subject=True,
        max_msg_size=EVENT_MAX_BYTES,
        deny_delete=True,  # the log is never rewritten
        deny_purge=True,
    )


def mail_configs(replicas: int = 1) -> list[StreamConfig]:
    """Mail is a work queue (an acked message is gone) with per-message TTL (`Nats-TTL`,
    nats-server 2.11+); its dead letters are kept until someone purges them."""
    mail = StreamConfig(
        name=subjects.MAIL_STREAM,
        subjects=[subjects.ALL_MAIL],
        storage=StorageType.FILE,
        num_replicas=replicas,
        retention=RetentionPolicy.WORK_QUEUE,
        allow_msg_ttl=True,
        max_msg_size=MAX_MESSAGE_BYTES,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.NEW,  # a full mailbox refuses new mail, never drops old
        max_bytes=MAIL_MAX_BYTES,
        max_msgs_per_subject=MAIL_MAX_PER_MAILBOX,
        discard_new_per_subject=True,
    )
    dlq = StreamConfig(
        name=subjects.MAIL_DLQ_STREAM,
        subjects=[subjects.ALL_DEAD_MAIL],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=2 * MAX_MESSAGE_BYTES,
        max_bytes=DEAD_MAIL_MAX_BYTES,
        discard=DiscardPolicy.OLD,
    )
    return [mail, dlq]


def replicas_for(nc: Client) -> int:
    """3 on a JetStream cluster of 3 or more servers, else 1.

    The server's INFO names its cluster (`cluster`) and lists every server's client address
    (`connect_urls`); a lone server sends neither."""
    info = nc._server_info  # nats-py keeps the server's last INFO here, with no public accessor
    if not info.get("cluster"):
        return 1
    return 3 if len(info.get("connect_urls") or []) >= 3 else 1


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create (or update) the event and mail streams and the KV buckets.

    An existing stream keeps its replica count if it has more than `replicas`: a process
    that asks for 1 must not shrink a cluster's streams."""
    for stream in mail_configs(replicas):
        await _ensure_stream(js, stream)
    await _ensure_stream(js, events_config(replicas))
    for bucket in subjects.BUCKETS:
        config = KeyValueConfig(
            bucket=bucket,
            history=10 if bucket == subjects.TEMPLATES_BUCKET else 1,
            storage=StorageType.FILE,
            replicas=replicas,
            direct=True,
            # Registry keys of dead agents (no heartbeat) drop out on their own.
            ttl=BUCKET_TTL_S if bucket == subjects.REGISTRY_BUCKET else None,
        )
        try:
            await js.create_key_value(config)
        except BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:
                raise
            log.debug("KV bucket %s exists with another configuration; kept as is", bucket)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create one stream, halving a `max_bytes` the store cannot reserve; or update it.

    An existing stream is looked up first: the server checks the store's room before the
    name, so a create of a stream that exists can be refused for room (10047) as well."""
    wanted = config.max_bytes
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        pass
    else:
        await _update(js, config)
        return
    while True:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:
                raise
            config.max_bytes = wanted  # made by another process meanwhile
            await _update(js, config)
            return
        except APIError as e:
            limit = config.max_bytes or 0
            if e.err_code != STORAGE_EXCEEDED or limit <= 0:
                raise
            # Below MIN_STREAM_BYTES: no limit of its own; the store's size is the limit, and
            # discard=new still refuses a write that does not fit.
            config.max_bytes = limit // 2 if limit // 2 >= MIN_STREAM_BYTES else -1
            shown = f"{config.max_bytes >> 20} MiB" if config.max_bytes > 0 else "the store's size"
            log.warning(
                "stream %s: the NATS store cannot reserve %d MiB for it; its limit is %s",
                config.name,
                limit >> 20,
                shown,
            )


async def _update(js: JetStreamContext, config: StreamConfig) -> None:
    """Bring an existing stream to `config`; a `max_bytes` the store cannot reserve leaves the
    stream's own limit as it is (never smaller: what it holds must not be over its limit)."""
    info = await js.stream_info(config.name or "")
    config.num_replicas = max(config.num_replicas or 1, info.config.num_replicas or 1)
    try:
        await js.update_stream(config)
    except APIError as e:
        if e.err_code != STORAGE_EXCEEDED or config.max_bytes == info.config.max_bytes:
            raise
        log.info(
            "stream %s keeps its limit of %s bytes (the store cannot reserve %s)",
            config.name,
            info.config.max_bytes,
            config.max_bytes,
        )
        config.max_bytes = info.config.max_bytes
        await js.update_stream(config)

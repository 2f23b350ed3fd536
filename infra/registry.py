"""The agent registry in KV `fleet_registry`: each agent's entry, kept fresh by a heartbeat.

The bucket has a TTL (`schemas.discovery.BUCKET_TTL_S`), so the key of an agent that stopped
beating disappears; readers also skip entries older than `MAX_AGE_S`, which is the bound that
matters for `find` (a dead agent drops out within seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from schemas import subjects
from schemas.discovery import HEARTBEAT_S, MAX_AGE_S, RegistryEntry, alive

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(RegistryEntry)


_buckets: weakref.WeakKeyDictionary[Client, KeyValue] = weakref.WeakKeyDictionary()


async def bucket(nc: Client) -> KeyValue:
    """The bucket's handle, looked up once per connection: `key_value()` asks the server for
    the stream's info, and a heartbeat that asked every time made 200 agents send 100 such
    requests a second beside their 100 puts. A handle only names the stream, so it stays
    good while the connection reconnects."""
    kv = _buckets.get(nc)
    if kv is None:
        kv = _buckets[nc] = await nc.jetstream().key_value(subjects.REGISTRY_BUCKET)
    return kv


async def put(nc: Client, entry: RegistryEntry) -> None:
    await (await bucket(nc)).put(subjects.token(entry.id), msgspec.json.encode(entry))


async def remove(nc: Client, agent_id: str) -> None:
    with contextlib.suppress(KeyNotFoundError):
        await (await bucket(nc)).delete(subjects.token(agent_id))


async def entries(nc: Client) -> list[RegistryEntry]:
    """Every entry in the bucket (dead ones included); unreadable ones are logged and skipped."""
    kv = await bucket(nc)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []

    async def one(key: str) -> RegistryEntry | None:
        try:
            got = await kv.get(key)
            return _decoder.decode(got.value or b"")
        except KeyNotFoundError:
            return None
        except msgspec.DecodeError as e:
            log.warning("registry entry %s unreadable: %s", key, e)
            return None

    found = await asyncio.gather(*(one(k) for k in keys))
    return [e for e in found if e is not None]


async def live(nc: Client, max_age_s: float = MAX_AGE_S) -> list[RegistryEntry]:
    now = datetime.now(UTC)
    return [e for e in await entries(nc) if alive(e, now, max_age_s)]


class Heartbeat:
    """Puts `make_entry()` every `period_s`, and at once after `poke()` (a state change)."""

    def __init__(
        self,
        nc: Client,
        make_entry: Callable[[], RegistryEntry | None],
        period_s: float = HEARTBEAT_S,
    ) -> None:
        self.nc, self.make_entry, self.period_s = nc, make_entry, period_s
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run())

    # A Ray async actor may call these from another event loop than the one the beat runs
    # in, so both only schedule work on the beat's own loop and never await its task.

    def poke(self) -> None:
        if self._task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._poked.set)

    def stop(self) -> None:
        if self._task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._poked.clear()
            try:
                entry = self.make_entry()
                if entry is not None:
                    await put(self.nc, entry)
            except asyncio.CancelledError:
                raise
            except Exception:  # a missed beat is retried next period; never end the loop
                log.exception("registry heartbeat failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.period_s)

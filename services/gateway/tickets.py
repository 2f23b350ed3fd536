"""What the gateway knows of its callers' tokens beyond one request: tickets and open sockets.

Tickets: a browser cannot set `Authorization` on a WebSocket, and a token in a URL ends up in
logs, history and Referer headers. So `POST /api/tickets` (with the header) gives a ticket: a
random string that opens one WebSocket, once, within `TICKET_TTL_S`. It is bound to the token's
digest, not to a copy of its role: when it is used the token must still be in the store, and
the role and name are read from there, so a revoke voids the token's unused tickets too.
Tickets live only in this process's memory (the gateway is the only one that can redeem them).

Sockets: every open WebSocket (live events, terminals) is held with the digest of the token
that opened it. `watch_tokens` reads the store several times a second (a stat; the file is
read again only when it changed, see services/tokens.py) and closes, with `REVOKED_CLOSE` and
a sentence, every socket whose token is no longer there: a revoke by `fleet token revoke` in
another process ends that token's sockets within `WATCH_S`, not at their next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import WSCloseCode, web

from schemas.errors import FleetError
from services.tokens import TokenEntry, TokenStore

log = logging.getLogger(__name__)

TICKET_TTL_S = 30.0
MAX_TICKETS_PER_TOKEN = 100  # unused ones; a caller cannot fill the gateway's memory
WATCH_S = 0.2  # how often the token store is looked at for revokes
REVOKED_CLOSE = WSCloseCode.POLICY_VIOLATION  # 1008: the connection's credential is void
MAX_REASON = 123  # RFC 6455 5.5: a close frame's payload is at most 125 bytes with its code


class Unauthorized(FleetError):
    code = "unauthorized"


class Forbidden(FleetError):
    code = "forbidden"


class TooManyTickets(FleetError):
    code = "rate_limited"

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        super().__init__(
            f"token {name!r} has {limit} unused tickets; open a WebSocket with one of them "
            f"or wait {TICKET_TTL_S:.0f} s for them to expire"
        )


@dataclass(frozen=True)
class Ticket:
    token_digest: str
    expires: float  # on `Tickets.clock`


def _ticket_digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class Tickets:
    """Unused tickets by their sha256: what token each stands for, and until when."""

    def __init__(
        self, ttl_s: float = TICKET_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._unused: dict[str, Ticket] = {}

    def issue(self, token_digest: str, entry: TokenEntry) -> str:
        """A new ticket for the token with `token_digest` (whose entry is `entry`)."""
        self._drop_expired()
        if sum(t.token_digest == token_digest for t in self._unused.values()) >= (
            MAX_TICKETS_PER_TOKEN
        ):
            raise TooManyTickets(entry.name, MAX_TICKETS_PER_TOKEN)
        ticket = secrets.token_urlsafe(32)
        self._unused[_ticket_digest(ticket)] = Ticket(token_digest, self.clock() + self.ttl_s)
        return ticket

    def redeem(self, ticket: str, store: TokenStore) -> tuple[str, TokenEntry]:
        """Use `ticket` up: the digest and the current entry of its token, or Unauthorized."""
        held = self._unused.pop(_ticket_digest(ticket), None)
        if held is None or held.expires <= self.clock():
            self._drop_expired()
            raise Unauthorized(
                "this ticket is unknown, used or expired: a ticket opens one WebSocket, "
                f"within {self.ttl_s:.0f} s; ask POST /api/tickets for another"
            )
        entry = store.by_digest(held.token_digest)
        if entry is None:
            raise Unauthorized("the token this ticket was issued for has been revoked")
        return held.token_digest, entry

    def _drop_expired(self) -> None:
        now = self.clock()
        for key in [k for k, t in self._unused.items() if t.expires <= now]:
            del self._unused[key]

    def __len__(self) -> int:
        return len(self._unused)


def revoked_reason(name: str) -> bytes:
    """The close frame's sentence (cut to fit in a control frame)."""
    text = f"token {name[:40]!r} was revoked; this connection is closed"
    return text.encode()[:MAX_REASON]


@dataclass(eq=False)
class _Open:
    ws: web.WebSocketResponse
    token_digest: str
    name: str


class Sockets:
    """The gateway's open WebSockets, each with the digest of the token that opened it."""

    def __init__(self) -> None:
        self._open: set[_Open] = set()
        self._closing: set[asyncio.Task[bool]] = set()

    @contextlib.contextmanager
    def hold(
        self, ws: web.WebSocketResponse, token_digest: str, entry: TokenEntry
    ) -> Iterator[None]:
        held = _Open(ws, token_digest, entry.name)
        self._open.add(held)
        try:
            yield
        finally:
            self._open.discard(held)

    def close_unless(self, live: set[str]) -> int:
        """Start closing every socket whose token is not in `live`; how many were started."""
        started = 0
        for held in list(self._open):
            if held.token_digest in live or held.ws.closed:
                continue
            if not held.ws.prepared:
                continue  # its handshake is not answered yet: closed at a later look
            self._open.discard(held)
            log.info("gateway: closing a WebSocket of revoked token %r", held.name)
            task = asyncio.create_task(
                held.ws.close(code=REVOKED_CLOSE, message=revoked_reason(held.name))
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            started += 1
        return started

    def __len__(self) -> int:
        return len(self._open)

    async def drain(self) -> None:
        """Wait for the closes already started (at shutdown)."""
        await asyncio.gather(*self._closing, return_exceptions=True)


async def watch_tokens(store: TokenStore, sockets: Sockets, period: float = WATCH_S) -> None:
    """Close the sockets of revoked tokens, looking at the store every `period` seconds."""
    complained = False
    while True:
        try:
            live = set(store.entries())
        except (FleetError, OSError) as e:  # a token file edited by hand into nonsense
            if not complained:
                log.error("gateway: %s; open WebSockets are left as they are", e)
            complained = True
        else:
            complained = False
            sockets.close_unless(live)
        await asyncio.sleep(period)

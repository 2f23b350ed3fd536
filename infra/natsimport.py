"""nats-py without aiohttp, until a WebSocket URL needs it.

nats-py's transport module imports aiohttp (when it is installed) for its WebSocket transport
alone. In a Ray actor's worker that is about 5.5 MB of an idle agent actor's memory, for a
transport fleetd does not use: it reaches NATS over TCP. `import_nats` imports nats-py with
aiohttp hidden for that one import (anything else in the process imports it as usual), and
`connect` (infra/nats.py) gives the transport its aiohttp back for a ws:// or wss:// URL.
"""

from __future__ import annotations

import importlib
import sys

_TRANSPORT = "nats.aio.transport"


def import_nats() -> None:
    """Import nats-py without aiohttp, unless either is loaded already (then it costs nothing
    more, or is too late)."""
    if _TRANSPORT in sys.modules or "aiohttp" in sys.modules:
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # `import aiohttp` raises ImportError
    try:
        importlib.import_module(_TRANSPORT)
    finally:
        del sys.modules["aiohttp"]


def for_url(url: str) -> None:
    """Give nats-py's WebSocket transport its aiohttp back when `url` names a ws(s):// server."""
    if "ws://" not in url.lower() and "wss://" not in url.lower():
        return
    transport = importlib.import_module(_TRANSPORT)
    if getattr(transport, "aiohttp", None) is None:
        for name in ("aiohttp", "multidict"):  # the two names its `try: import` sets
            setattr(transport, name, importlib.import_module(name))

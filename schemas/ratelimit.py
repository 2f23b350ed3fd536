"""Per-sender rate limits: a token bucket per sender, pure logic with the clock passed in.

A sender may burst up to `burst` requests, then `rate` per second. The table of buckets is
bounded: past `max_senders` the least recently seen sender is forgotten (and starts full).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from schemas.errors import RateLimited


@dataclass(frozen=True, slots=True)
class TokenBucket:
    tokens: float
    at: float  # the clock reading at which `tokens` was true

    def take(self, now: float, rate: float, burst: float) -> tuple[TokenBucket, float]:
        """Take one token: the new bucket and 0.0, or the unchanged one and seconds to wait."""
        tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        if tokens >= 1.0:
            return TokenBucket(tokens - 1.0, now), 0.0
        return TokenBucket(tokens, now), (1.0 - tokens) / rate if rate > 0 else float("inf")


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, what: str = "requests", max_senders: int = 10_000
    ) -> None:
        self.rate, self.burst, self.what, self.max_senders = rate, burst, what, max_senders
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, sender: str, now: float) -> None:
        """Count one request from `sender`, or raise `RateLimited` saying when to retry."""
        bucket = self._buckets.pop(sender, None) or TokenBucket(self.burst, now)
        bucket, wait = bucket.take(now, self.rate, self.burst)
        self._buckets[sender] = bucket
        if len(self._buckets) > self.max_senders:
            self._buckets.popitem(last=False)
        if wait:
            raise RateLimited(sender, self.what, self.rate, self.burst, wait)

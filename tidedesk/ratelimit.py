"""Rate limits: a token bucket per WebSocket connection (pure arithmetic, the clock passed in)
and :class:`RateLimiter`, fixed one-minute windows per client address and per signed-in
principal kept in the store seam, so they are shared by every chat node through Redis in a
cluster and in-process in embedded mode."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tidedesk import metrics
from tidedesk.errors import Unavailable
from tidedesk.store import Store

log = logging.getLogger(__name__)

WINDOW_SECS = 60


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    tokens: float
    updated: float

    @classmethod
    def per_window(cls, count: int, window_s: float, now: float) -> TokenBucket:
        return cls(capacity=count, refill_per_s=count / window_s, tokens=count, updated=now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.refill_per_s)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


def window(now: float) -> tuple[int, float]:
    """The index of the one-minute window ``now`` falls in, and the seconds left in it."""
    index = int(now // WINDOW_SECS)
    return index, (index + 1) * WINDOW_SECS - now


class RateLimiter:
    """Counts hits per (scope, key) and minute in the store."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    async def hit(self, scope: str, key: str, limit_per_min: int) -> int | None:
        """None when allowed; else the seconds until the window ends (for Retry-After).
        ``limit_per_min`` 0 = unlimited. A store outage lets the hit through: a rate limit must
        not take the API down with Redis."""
        if limit_per_min <= 0:
            return None
        now = self.clock()
        index, left = window(now)
        try:
            count = await self.store.kv_incr(f"rl:{scope}:{key}:{index}", left, now)
        except Unavailable:
            log.warning("rate limit not checked: store unavailable", extra={"scope": scope})
            return None
        if count <= limit_per_min:
            return None
        metrics.RATE_LIMITED.labels(scope=scope).inc()
        return int(left) + 1

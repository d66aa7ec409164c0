"""A token bucket with the clock passed in (pure arithmetic, testable with fixed times)."""

from __future__ import annotations

from dataclasses import dataclass


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

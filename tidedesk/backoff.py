"""Jittered exponential back-off (pure: the random draw is passed in).

A process waiting for a backend at start-up (issue 19) retries after ``base * 2**attempt``
seconds, capped, and scaled by a random factor in [0.5, 1): replicas that start together do not
retry together, and each wait is at least half the nominal one (no busy loop).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 10.0

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds before retry number ``attempt`` (0 for the first); ``draw`` in [0, 1)."""
        if attempt < 0 or not 0.0 <= draw < 1.0:
            raise ValueError(f"attempt must be >= 0 and draw in [0, 1), got {attempt}, {draw}")
        nominal = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 62))
        return nominal * (0.5 + draw / 2)

"""A clock that moves only when told: the simulator's time, handed to the real controller."""

from __future__ import annotations


class ManualClock:
    """Call it for the time (unix seconds) as ``time.time`` is called; set :attr:`now` to move."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

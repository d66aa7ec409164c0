"""An in-memory scaling target (the simulator's and tests' Swarm): replicas are start times.

A scale-up starts the new replicas at the clock's time; a scale-down removes the newest ones
first. :meth:`MemoryTarget.ready` counts the replicas past their start-up delay, which is what
serves load. Every call succeeds, so the controller's error paths are not exercised here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controlplane.decision import ReplicaState
from controlplane.policy import Policy
from controlplane.target import ScaleResult


class MemoryTarget:
    def __init__(
        self,
        clock: Callable[[], float],
        started_at: Iterable[float] = (),
        startup_delay_s: float = 0.0,
    ) -> None:
        self._clock = clock
        self._starts = sorted(started_at)
        self.startup_delay_s = startup_delay_s

    def read(self, policy: Policy) -> ReplicaState:
        return ReplicaState(desired=len(self._starts), started_at=tuple(self._starts))

    def scale(self, policy: Policy, replicas: int, message: str) -> ScaleResult:
        if replicas > len(self._starts):
            self._starts.extend([self._clock()] * (replicas - len(self._starts)))
        else:
            del self._starts[replicas:]
        return ScaleResult(applied=True)

    @property
    def replicas(self) -> int:
        return len(self._starts)

    def ready(self, now: float) -> int:
        """Replicas that serve at ``now``: started at least ``startup_delay_s`` before it."""
        return sum(1 for s in self._starts if s + self.startup_delay_s <= now)

"""Scheduled capacity: planned events (a promotion, a TV spot) that need replicas ready in time.

An event has a name, a start and an end (unix seconds), a lead time and a minimum replica count
per policy. From ``start - lead`` until ``end`` the event is *active* and its minimum is a floor
under the autoscaler's decision: the replicas are started ``lead`` before the promotion, so they
are running and warm when the visitors arrive. After ``end`` the floor is gone and the normal,
slow and stabilised scale-down takes over. This module is pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DEFAULT_EVENT_LEAD_S = 300.0  # seconds before start the floor is raised: start-up + warm-up, ample
MAX_EVENT_LENGTH_S = 14 * 24 * 3600.0  # longer than two weeks is a new `min`, not an event


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ScheduledEvent:
    name: str
    start: float  # unix seconds
    end: float  # unix seconds
    lead_s: float
    replicas: tuple[tuple[str, int], ...]  # (policy name, minimum replicas)
    source: str = "file"  # "file" (the policies file) or "api"
    by: str = ""
    reason: str = ""

    def floor_for(self, policy: str) -> int | None:
        return next((n for p, n in self.replicas if p == policy), None)

    def active(self, now: float) -> bool:
        return self.start - self.lead_s <= now < self.end

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "start": iso(self.start),
            "end": iso(self.end),
            "lead_s": self.lead_s,
            "min_replicas": dict(self.replicas),
            "source": self.source,
            "by": self.by,
            "reason": self.reason,
        }
        if now is not None:
            out["active"] = self.active(now)
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "end": self.end,
            "lead_s": self.lead_s,
            "replicas": [list(r) for r in self.replicas],
            "source": self.source,
            "by": self.by,
            "reason": self.reason,
        }

    @classmethod
    def from_state(cls, raw: dict[str, Any]) -> ScheduledEvent:
        return cls(
            name=str(raw["name"]),
            start=float(raw["start"]),
            end=float(raw["end"]),
            lead_s=float(raw["lead_s"]),
            replicas=tuple((str(p), int(n)) for p, n in raw["replicas"]),
            source=str(raw.get("source", "api")),
            by=str(raw.get("by", "")),
            reason=str(raw.get("reason", "")),
        )


@dataclass(frozen=True)
class ScheduledFloor:
    replicas: int
    event: str
    starts_in_s: float  # negative once the event has started


def scheduled_floor(
    events: Iterable[ScheduledEvent], policy: str, now: float
) -> ScheduledFloor | None:
    """The highest minimum of the events active for ``policy`` at ``now``, or None."""
    best: ScheduledFloor | None = None
    for e in events:
        n = e.floor_for(policy)
        if n is None or not e.active(now):
            continue
        if best is None or n > best.replicas:
            best = ScheduledFloor(n, e.name, e.start - now)
    return best


def upcoming(events: Sequence[ScheduledEvent], policy: str, now: float) -> list[ScheduledEvent]:
    """Events for ``policy`` that have not ended, soonest first."""
    mine = [e for e in events if e.floor_for(policy) is not None and e.end > now]
    return sorted(mine, key=lambda e: e.start)

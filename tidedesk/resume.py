"""Resume decisions (pure): which missed messages a reconnecting client gets, and from where.

The recent-history stream in the store holds the last few hundred committed messages of a
conversation; the database holds all of them. The stream answers when it reaches back to the
first missed seq; otherwise the database does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# When the store lost a conversation's counter, it is re-seeded this far above the highest
# stored seq, so a message still in flight in the broker can never share a seq with a new one.
SEQ_RESEED_GAP = 100


@dataclass(frozen=True)
class ResumePlan:
    messages: tuple[dict[str, Any], ...]
    from_database: bool


def plan_resume(after_seq: int, recent: Sequence[dict[str, Any]], *,
                include_private: bool) -> ResumePlan:
    """``recent`` is the stream in seq order. If it starts at or before ``after_seq + 1`` it
    covers every missed message; else the caller must read the database."""
    if not recent or recent[0]["seq"] > after_seq + 1:
        return ResumePlan((), from_database=True)
    picked = tuple(m for m in recent
                   if m["seq"] > after_seq and (include_private or not m.get("private")))
    return ResumePlan(picked, from_database=False)


def reseed_floor(max_stored_seq: int, conversation_is_new: bool) -> int:
    """The counter value to seed when the store does not know a conversation."""
    return 0 if conversation_is_new else max_stored_seq + SEQ_RESEED_GAP

"""Routing decisions of the router (pure: no I/O, no clock; ``now`` is passed in).

The rules themselves (YAML, first match wins, business hours) are the model in
``tidedesk/routing_rules.py``, which chat nodes read too. Within a pool the online agent with the
fewest open chats under their limit gets the chat, ties to the one idle longest (earliest last
assignment), then the lowest id for determinism.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from tidedesk.routing_rules import Rule


class AgentLike(Protocol):
    @property
    def agent_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def open_chats(self) -> int: ...
    @property
    def max_chats(self) -> int: ...
    @property
    def last_assigned_at(self) -> float: ...


def choose_agent(agents: Sequence[AgentLike]) -> AgentLike | None:
    """The online agent with the fewest open chats under their limit; ties: idle longest."""
    free = [a for a in agents
            if a.status == "online" and a.open_chats < a.max_chats]
    if not free:
        return None
    return min(free, key=lambda a: (a.open_chats, a.last_assigned_at, a.agent_id))


def anyone_online(agents: Iterable[AgentLike]) -> bool:
    """Someone who could answer later (online or away): otherwise the chat becomes a ticket."""
    return any(a.status in ("online", "away") for a in agents)


def fallback_due(rule: Rule | None, enqueued_at: float, now: float) -> str | None:
    """The pool to move a waiting chat to, once it has waited longer than the rule allows."""
    if rule is None or rule.fallback is None or rule.max_wait_s is None:
        return None
    return rule.fallback if now - enqueued_at >= rule.max_wait_s else None

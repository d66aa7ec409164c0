"""The conversation state machine (pure: no I/O, the clock is passed in).

A visitor's conversation is in one of these states; every state has a way out that a person sees
(docs/protocol.md, "Conversation lifecycle"):

=============  ==============================================================================
state          what moves it out (event → next state)
=============  ==============================================================================
``new``        no row exists yet: the widget is open but the visitor has not written.
               ``first_message`` → ``queued`` (then routed at once, see ``routed_*``).
``queued``     waiting in a pool's queue. ``routed_assigned`` / ``take`` / ``assign_agent`` →
               ``assigned``; ``routed_offline`` (nobody left online, outside business hours)
               → ``offline``; ``fallback`` / ``assign_pool`` → ``queued`` (another pool);
               ``close`` / ``idle_close`` → ``closed``.
``assigned``   an agent owns it (one owner, within their limit). ``agent_left`` (sign-out,
               ``offline`` status, sockets gone past the grace period) → ``assigned`` (another
               free agent of the pool) or ``queued`` (front of the queue) or ``offline``
               (nobody of the pool online); ``transfer`` / ``assign_agent`` / ``assign_pool`` →
               ``assigned`` or ``queued``; ``close`` / ``idle_close`` → ``closed``.
``offline``    nobody could take it: it is a ticket (open / pending / solved) in the agents'
               tickets view. ``agents_online`` (an agent comes online while the visitor is
               connected, or the visitor reconnects while someone is online) → routed again
               (``queued`` / ``assigned``); ``take`` / ``assign_agent`` → ``assigned``;
               ``close`` → ``closed``. Replies (``reply``) keep it ``offline``.
``closed``     final. The visitor writing again opens a *new* conversation (``new`` →
               ``first_message``); the closed one stays closed.
=============  ==============================================================================

``idle_close`` applies to ``queued`` and ``assigned`` only: an ``offline`` conversation is a
ticket that waits for an agent, however long the visitor is away.

Ticket statuses (for ``offline`` conversations, kept after they are routed): ``open`` (the
visitor wrote last), ``pending`` (an agent replied, waiting for the visitor), ``solved`` (the
conversation closed).
"""

from __future__ import annotations

from typing import Final, Literal

State = Literal["new", "queued", "assigned", "offline", "closed"]
Event = Literal[
    "first_message", "routed_assigned", "routed_queued", "routed_offline", "fallback",
    "agent_left_assigned", "agent_left_queued", "agent_left_offline", "transfer_agent",
    "transfer_queued", "take", "assign_agent", "assign_pool_assigned", "assign_pool_queued",
    "assign_pool_offline", "agents_online", "reply", "close", "idle_close",
]
TicketStatus = Literal["open", "pending", "solved"]

STATES: Final[tuple[State, ...]] = ("new", "queued", "assigned", "offline", "closed")
OPEN_STATES: Final[frozenset[str]] = frozenset({"queued", "assigned", "offline"})
TICKET_STATUSES: Final[tuple[TicketStatus, ...]] = ("open", "pending", "solved")

# (state, event) -> the next state. Anything not here is refused (:class:`TransitionError`).
TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    ("new", "first_message"): "queued",
    ("closed", "first_message"): "queued",  # a new conversation: the closed one stays closed
    **{(s, "routed_assigned"): "assigned" for s in ("queued", "offline")},
    **{(s, "routed_queued"): "queued" for s in ("queued", "offline")},
    **{(s, "routed_offline"): "offline" for s in ("queued", "offline")},
    ("queued", "fallback"): "queued",
    ("assigned", "agent_left_assigned"): "assigned",
    ("assigned", "agent_left_queued"): "queued",
    ("assigned", "agent_left_offline"): "offline",
    ("assigned", "transfer_agent"): "assigned",
    ("assigned", "transfer_queued"): "queued",
    ("queued", "take"): "assigned",
    ("offline", "take"): "assigned",
    **{(s, "assign_agent"): "assigned" for s in ("queued", "assigned", "offline")},
    **{(s, "assign_pool_assigned"): "assigned" for s in ("queued", "assigned", "offline")},
    **{(s, "assign_pool_queued"): "queued" for s in ("queued", "assigned", "offline")},
    **{(s, "assign_pool_offline"): "offline" for s in ("queued", "assigned", "offline")},
    ("offline", "agents_online"): "queued",  # then routed like any other
    ("offline", "reply"): "offline",
    ("queued", "reply"): "queued",
    ("assigned", "reply"): "assigned",
    **{(s, "close"): "closed" for s in ("queued", "assigned", "offline")},
    **{(s, "idle_close"): "closed" for s in ("queued", "assigned")},
}


class TransitionError(ValueError):
    """An event that does not apply to the state; the message says which would."""


def next_state(state: State, event: Event) -> State:
    """The state after ``event``; :class:`TransitionError` when it does not apply."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        allowed = sorted(e for (s, e) in TRANSITIONS if s == state)
        raise TransitionError(f"a {state} conversation cannot take {event!r}; it can take: "
                              f"{', '.join(allowed) or 'nothing (final)'}")
    return nxt


def ways_out(state: State) -> dict[Event, State]:
    """Every event that moves ``state`` and where it goes (docs and the console use it)."""
    return {e: nxt for (s, e), nxt in TRANSITIONS.items() if s == state}


def can_take(state: str) -> bool:
    """An agent may take a waiting or offline conversation (``POST .../take``)."""
    return state in ("queued", "offline")


def grace_expired(status: str, status_since: float, now: float, grace_s: float) -> bool:
    """An agent whose sockets are all gone (status ``offline`` since ``status_since``: their
    last socket closed, or their node stopped heartbeating, see :func:`presence_lapsed`) gives
    their chats back once the grace period for a network blip is over."""
    return status == "offline" and now - status_since >= grace_s


def presence_lapsed(status: str, *, updated_at: float, presence_expiry: float | None,
                    now: float, settle_s: float) -> float | None:
    """When an agent the store still counts as ``online`` or ``away`` is gone all the same: no
    node holds a live socket of theirs (their chat node died without closing them, so no
    disconnect ever came). Returns the moment they went (their grace period counts from it),
    or None while they are present, already ``offline``, or a node told the routers about them
    less than ``settle_s`` ago (a console that is connecting says ``online`` a moment before
    its presence is written).

    ``presence_expiry`` is the latest expiry of their connections, live or not (a connection
    expires ``TIDEDESK_PRESENCE_TTL_S`` after its node's last heartbeat); None when the store
    holds none of them any more, then the moment is ``now`` (the first sweep to notice)."""
    if status == "offline" or now - updated_at < settle_s:
        return None
    if presence_expiry is not None and presence_expiry > now:
        return None
    return max(updated_at, presence_expiry if presence_expiry is not None else now)


def status_to_restore(*, known: bool, lapsed_from: str) -> str | None:
    """What a chat node that holds a live socket of an agent announces again at its heartbeat:
    ``online`` when the store forgot the agent (it restarted empty); the status they had when
    the store counted them gone for a lapsed presence (:func:`presence_lapsed`: a Redis outage
    longer than the heartbeat, say) although their socket is alive here; else nothing."""
    if not known:
        return "online"
    return lapsed_from or None


def idle_close_due(state: str, *, visitor_present: bool, last_activity: float,
                   gone_since: float | None, now: float, idle_s: float) -> bool:
    """A queued or assigned conversation closes itself when its visitor has no socket left
    and nothing happened in it (no message, no state change) for ``idle_s``; when the store
    remembers when the visitor's last socket closed, that must be ``idle_s`` ago as well."""
    if state not in ("queued", "assigned") or visitor_present:
        return False
    if now - last_activity < idle_s:
        return False
    return gone_since is None or now - gone_since >= idle_s


def ticket_status_after(current: TicketStatus, *, by: Literal["visitor", "agent", "close"]
                        ) -> TicketStatus:
    """An agent's reply makes a ticket ``pending`` (waiting for the visitor); the visitor's
    message opens it again; closing the conversation solves it. Solved stays solved unless the
    visitor writes again."""
    if by == "close":
        return "solved"
    if by == "agent":
        return "pending" if current != "solved" else "solved"
    return "open"

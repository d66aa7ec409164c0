"""The conversation state machine (tidedesk/lifecycle.py): a table of named cases."""

from __future__ import annotations

import pytest

from tidedesk.lifecycle import (
    STATES,
    TRANSITIONS,
    TransitionError,
    can_take,
    grace_expired,
    idle_close_due,
    next_state,
    presence_lapsed,
    status_to_restore,
    ticket_status_after,
    ways_out,
)

CASES = [
    ("first message opens a conversation", "new", "first_message", "queued"),
    ("writing after closed opens a new one", "closed", "first_message", "queued"),
    ("routed to a free agent", "queued", "routed_assigned", "assigned"),
    ("nobody online: a ticket", "queued", "routed_offline", "offline"),
    ("agent leaves, another takes it", "assigned", "agent_left_assigned", "assigned"),
    ("agent leaves, back to the queue", "assigned", "agent_left_queued", "queued"),
    ("agent leaves, nobody left in the pool", "assigned", "agent_left_offline", "offline"),
    ("an agent takes a ticket", "offline", "take", "assigned"),
    ("an agent takes a waiting chat", "queued", "take", "assigned"),
    ("a supervisor assigns a ticket", "offline", "assign_agent", "assigned"),
    ("agents come online", "offline", "agents_online", "queued"),
    ("a reply keeps a ticket", "offline", "reply", "offline"),
    ("idle visitor", "assigned", "idle_close", "closed"),
    ("the agent closes", "offline", "close", "closed"),
]


@pytest.mark.parametrize(("name", "state", "event", "after"), CASES, ids=[c[0] for c in CASES])
def test_transitions(name: str, state: str, event: str, after: str) -> None:
    assert next_state(state, event) == after  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "event"), [
    ("new", "close"), ("closed", "close"), ("assigned", "take"), ("offline", "idle_close"),
    ("new", "take"), ("closed", "reply"),
])
def test_refused_transitions_say_what_would_apply(state: str, event: str) -> None:
    with pytest.raises(TransitionError, match="it can take"):
        next_state(state, event)  # type: ignore[arg-type]


def test_every_state_but_closed_has_a_way_out_and_every_open_state_can_close() -> None:
    for state in STATES:
        outs = ways_out(state)
        assert outs, state
        if state in ("queued", "assigned", "offline"):
            assert outs["close"] == "closed"
    assert set(ways_out("closed")) == {"first_message"}
    assert {s for (s, _) in TRANSITIONS} == set(STATES)
    assert set(TRANSITIONS.values()) <= set(STATES)


def test_take_applies_to_waiting_and_offline_only() -> None:
    assert [s for s in STATES if can_take(s)] == ["queued", "offline"]


@pytest.mark.parametrize(("status", "since", "now", "expired"), [
    ("offline", 100, 129, False),  # a network blip
    ("offline", 100, 130, True),
    ("online", 0, 1000, False),
    ("away", 0, 1000, False),
])
def test_grace_period(status: str, since: float, now: float, expired: bool) -> None:
    assert grace_expired(status, since, now, 30) is expired


@pytest.mark.parametrize(("state", "present", "last", "gone", "now", "due"), [
    ("assigned", False, 0, None, 600, True),
    ("queued", False, 0, 100, 700, True),
    ("assigned", True, 0, None, 10_000, False),  # the visitor is still there
    ("assigned", False, 500, None, 600, False),  # something happened recently
    ("assigned", False, 0, 300, 600, False),  # left only 5 minutes ago
    ("offline", False, 0, None, 10_000, False),  # tickets wait for an agent
    ("closed", False, 0, None, 10_000, False),
])
def test_idle_close(state: str, present: bool, last: float, gone: float | None, now: float,
                    due: bool) -> None:
    assert idle_close_due(state, visitor_present=present, last_activity=last, gone_since=gone,
                          now=now, idle_s=600) is due


@pytest.mark.parametrize(("status", "updated", "expiry", "now", "gone"), [
    pytest.param("online", 100, 190, 150, None, id="present: the node heartbeats"),
    pytest.param("online", 100, 190, 190, 190, id="node died: gone when presence lapsed"),
    pytest.param("online", 100, 190, 250, 190, id="noticed late: still from the lapse"),
    pytest.param("away", 100, 190, 200, 190, id="away counts too"),
    pytest.param("online", 100, None, 300, 300, id="presence dropped: from now"),
    pytest.param("offline", 100, 150, 300, None, id="already offline: the grace runs"),
    pytest.param("online", 298, None, 300, None, id="connecting: presence comes next"),
    pytest.param("online", 295, None, 300, 300, id="settled and still no presence"),
    pytest.param("online", 200, 150, 300, 200, id="an older lapse than the last update"),
])
def test_presence_lapsed(status: str, updated: float, expiry: float | None, now: float,
                         gone: float | None) -> None:
    assert presence_lapsed(status, updated_at=updated, presence_expiry=expiry, now=now,
                           settle_s=5) == gone


@pytest.mark.parametrize(("known", "lapsed_from", "status"), [
    pytest.param(False, "", "online", id="the store forgot the agent"),
    pytest.param(True, "", None, id="the store knows them: nothing to say"),
    pytest.param(True, "away", "away", id="counted gone although here: as they were"),
    pytest.param(True, "online", "online", id="counted gone while online"),
])
def test_status_to_restore(known: bool, lapsed_from: str, status: str | None) -> None:
    assert status_to_restore(known=known, lapsed_from=lapsed_from) == status


def test_ticket_status() -> None:
    assert ticket_status_after("open", by="agent") == "pending"
    assert ticket_status_after("pending", by="visitor") == "open"
    assert ticket_status_after("pending", by="close") == "solved"
    assert ticket_status_after("solved", by="agent") == "solved"
    assert ticket_status_after("solved", by="visitor") == "open"

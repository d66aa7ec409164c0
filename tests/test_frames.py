"""tidedesk.frames: each frame's JSON is the one clients received before the Structs."""

from __future__ import annotations

from typing import Any

import pytest

from tidedesk import frames as f

CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("message, plain", f.MessageFrame(conversation_id="c", seq=3, id="m1", from_="visitor",
                                      body="hi", ts=1.5),
     {"type": "message", "conversation_id": "c", "seq": 3, "id": "m1", "from": "visitor",
      "body": "hi", "ts": 1.5}),
    ("message, named note", f.MessageFrame(conversation_id="c", seq=4, id="n", from_="agent",
                                          body="x", ts=2.0, name="Ann", private=True),
     {"type": "message", "conversation_id": "c", "seq": 4, "id": "n", "from": "agent",
      "body": "x", "ts": 2.0, "name": "Ann", "private": True}),
    ("state", f.StateFrame(state="closed"), {"type": "state", "state": "closed"}),
    ("queue", f.QueueFrame(position=2), {"type": "queue", "position": 2}),
    ("busy", f.BusyFrame(position=9), {"type": "busy", "position": 9}),
    ("assigned to the visitor", f.VisitorAssignedFrame(agent=f.AgentRef(id="7", name="Bo")),
     {"type": "assigned", "agent": {"id": "7", "name": "Bo"}}),
    ("assigned to the agent", f.AgentAssignedFrame(
        conversation_id="c", visitor=f.visitor_summary("v", None), last_seq=0),
     {"type": "assigned", "conversation_id": "c",
      "visitor": {"id": "v", "name": "", "tags": [], "locale": "en"}, "last_seq": 0}),
    ("closed", f.ClosedFrame(conversation_id="c"), {"type": "closed", "conversation_id": "c"}),
    ("unassigned", f.UnassignedFrame(conversation_id="c"),
     {"type": "unassigned", "conversation_id": "c"}),
    ("error without id", f.ErrorFrame(code="x", message="y"),
     {"type": "error", "code": "x", "message": "y"}),
    ("error with id", f.ErrorFrame(code="x", message="y", id="m1"),
     {"type": "error", "code": "x", "message": "y", "id": "m1"}),
    ("ack", f.AckFrame(id="m1", seq=3), {"type": "ack", "id": "m1", "seq": 3}),
    ("pong", f.PongFrame(), {"type": "pong"}),
    ("reconnect", f.ReconnectFrame(after_ms=1500), {"type": "reconnect", "after_ms": 1500}),
    ("typing", f.TypingFrame(on=True, conversation_id="c", from_="agent"),
     {"type": "typing", "on": True, "conversation_id": "c", "from": "agent"}),
]


@pytest.mark.parametrize(("name", "frame", "expected"), CASES, ids=[c[0] for c in CASES])
def test_frame_json_keeps_todays_keys_order_and_omissions(name: str, frame: Any,
                                                          expected: dict[str, Any]) -> None:
    got = f.frame_dict(frame)
    assert got == expected, name
    assert list(got) == list(expected), name

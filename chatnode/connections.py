"""What this chat node knows about each of its WebSocket connections, keyed by connection id.

One :class:`ConnectionState` per open socket: who it belongs to, the signed-in principal, the
visitor's conversation or the agent's chats, and the frame-rate bucket. Handlers hold only the
id and the :class:`ConnectionRegistry` (owned by the :class:`~chatnode.hub.Hub`) holds the rest,
so the service's rules read and change one object instead of attributes on handler objects.
Nothing here survives a restart: a client that reconnects builds its state again from hello.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidedesk.auth import Principal
from tidedesk.ratelimit import TokenBucket

# Message (conversation, seq) pairs remembered per connection for dedupe; older ones are covered
# by the client's own seq check.
SEEN_PER_CONNECTION = 2000


@dataclass
class VisitorSession:
    """The visitor's open conversation as this connection knows it. ``state`` follows the
    ``state`` frames the routers send, so a message needs no database read. A visitor who has
    not written yet has no conversation: ``conversation_id`` None, ``state`` ``"new"``."""

    visitor_id: str
    conversation_id: str | None
    state: str
    pool: str
    locale: str
    name: str
    tags: tuple[str, ...]
    # The connection's presence was registered with the read that made this session (a
    # connect served from the connect cache, issue 17): visitor_joined need not add it.
    present: bool = False


@dataclass
class ConnectionState:
    conn_id: str
    role: str  # "visitor" or "agent": the WebSocket route the connection came in on
    bucket: TokenBucket
    who: str = ""  # "visitor:<id>" or "agent:<id>" once authenticated
    principal: Principal | None = None
    session: VisitorSession | None = None  # visitors only
    agent: Any = None  # agents only: their database row, for name and status announcements
    # Agents only: conversation id → visitor id of the chats this console was given (hello,
    # assigned); with the store's owner check they let an agent write without a database read.
    chats: dict[str, str] = field(default_factory=dict)
    registered: bool = False  # in the Hub and in presence: frames are accepted
    signed_out: bool = False  # agents only: closed because the sign-in ended (issue 13)
    # The (conversation, seq) of the messages sent on this connection, oldest first.
    shown: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict)
    # Recovery, then join (docs/protocol.md, "Resume order"): live message frames wait in
    # ``held`` while the connection is joining (a visitor, from before its presence is added
    # until its first frame) or while a resume of their conversation is being answered.
    joining: bool = False
    resuming: set[str] = field(default_factory=set)
    held: list[dict[str, Any]] = field(default_factory=list)

    def hold(self, frame: dict[str, Any]) -> bool:
        """Keep a live message frame back while a replay is due; True if it was kept."""
        if frame.get("type") != "message":
            return False
        if self.joining or frame.get("conversation_id") in self.resuming:
            if len(self.held) < SEEN_PER_CONNECTION:  # bounded; a resume covers the rest
                self.held.append(frame)
            return True
        return False

    def release(self, conv_id: str | None = None) -> list[dict[str, Any]]:
        """The held frames of ``conv_id`` (all of them when None), taken out of ``held``."""
        if conv_id is None:
            out, self.held = self.held, []
            return out
        out = [f for f in self.held if f.get("conversation_id") == conv_id]
        if out:
            self.held = [f for f in self.held if f.get("conversation_id") != conv_id]
        return out

    def first_showing(self, frame: dict[str, Any]) -> bool:
        """Record a frame about to be sent; False for a message this connection already got
        (a broker redelivery or a resume overlapping live delivery)."""
        if frame.get("type") != "message":
            return True
        key = (str(frame.get("conversation_id")), int(frame.get("seq", -1)))
        if key in self.shown:
            return False
        self.shown[key] = None
        if len(self.shown) > SEEN_PER_CONNECTION:
            self.shown.popitem(last=False)
        return True

    def track(self, frame: dict[str, Any]) -> None:
        """Update what this connection knows from a frame about to be sent to it."""
        kind = frame.get("type")
        if kind == "state" and self.session is not None and isinstance(frame.get("state"), str):
            self.session.state = frame["state"]
        elif kind == "assigned" and self.role == "agent" and isinstance(frame.get("visitor"),
                                                                          dict):
            self.chats[frame["conversation_id"]] = frame["visitor"].get("id", "")
        elif kind == "hello" and self.role == "agent":
            for item in frame.get("conversations", []):
                self.chats[item["conversation_id"]] = item["visitor"]["id"]


class ConnectionRegistry:
    """The states of the open connections; a state is added when the socket opens and removed
    when it closes."""

    def __init__(self) -> None:
        self._states: dict[str, ConnectionState] = {}

    def open(self, role: str, bucket: TokenBucket) -> ConnectionState:
        # 128 random bits as 32 hex digits, like uuid4().hex, in a third of its time (no UUID
        # object): one per connect (issue 17, P1).
        state = ConnectionState(conn_id=secrets.token_hex(16), role=role, bucket=bucket)
        self._states[state.conn_id] = state
        return state

    def get(self, conn_id: str) -> ConnectionState:
        """The state of an open connection (KeyError for one that is not open)."""
        return self._states[conn_id]

    def find(self, conn_id: str) -> ConnectionState | None:
        """The state, or None once the connection closed (a late ack or notice)."""
        return self._states.get(conn_id)

    def close(self, conn_id: str) -> ConnectionState | None:
        return self._states.pop(conn_id, None)

    def __len__(self) -> int:
        return len(self._states)


class Peer(Protocol):
    """The socket a service method answers through, in the order it sends."""

    def send(self, frame: dict[str, Any]) -> None: ...

    def send_unseen(self, frame: dict[str, Any]) -> None:
        """Send unless this connection already got this message (a resumed one)."""

    def fail(self, code: str, message: str, close_code: int | None = None,
             frame_id: str | None = None) -> None:
        """Send an error frame, then close with ``close_code`` if one is given."""

"""The frames a client receives (WebSocket and REST), one typed Struct each (pure; no I/O).

Each frame has one constructor, its Struct, and one way to the JSON the client sees:
:func:`frame_dict` (the same keys, in the same order, with the same omissions as docs/protocol.md).
:class:`MessageFrame` is also the broker's key-less delivery of a message
(``tidedesk.envelopes``): array-like, so its field order is part of the wire format and new
fields go at the end with a default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, Protocol

import msgspec

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Sender = Literal["visitor", "agent", "system"]


ATTACHMENT_URL = "/api/v1/attachments/{}"


class AttachmentMeta(msgspec.Struct, array_like=True, frozen=True):
    """A file sent with a message (issue 15); its ``url`` is derived from the id."""

    id: str
    name: str
    content_type: str
    size: NonNegative

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "content_type": self.content_type,
                "size": self.size, "url": ATTACHMENT_URL.format(self.id)}


_attachments_decoder = msgspec.json.Decoder(tuple[AttachmentMeta, ...])


def attachments_json(attachments: tuple[AttachmentMeta, ...]) -> str | None:
    """How a message row stores its attachments (None: text only)."""
    return msgspec.json.encode(attachments).decode() if attachments else None


def attachments_from_json(stored: str | None) -> tuple[AttachmentMeta, ...]:
    return _attachments_decoder.decode(stored) if stored else ()


def attachments_from_dicts(items: Iterable[dict[str, Any]]) -> tuple[AttachmentMeta, ...]:
    """The metadata of a frame's ``attachments`` list (its ``url`` is derived, not kept)."""
    return tuple(AttachmentMeta(a["id"], a["name"], a["content_type"], a["size"])
                 for a in items)


class MessageFrame(msgspec.Struct, array_like=True, frozen=True):
    """The ``message`` frame of docs/protocol.md, the bulk of all deliveries, without key names."""

    conversation_id: str
    seq: NonNegative
    id: str
    from_: Sender = msgspec.field(name="from")
    body: str
    ts: float
    name: str = ""
    private: bool = False
    attachments: tuple[AttachmentMeta, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The client's JSON: ``name`` only when set, ``private`` only when true,
        ``attachments`` only when there are some."""
        frame: dict[str, Any] = {"type": "message", "conversation_id": self.conversation_id,
                                 "seq": self.seq, "id": self.id, "from": self.from_,
                                 "body": self.body, "ts": self.ts}
        if self.name:
            frame["name"] = self.name
        if self.private:
            frame["private"] = True
        if self.attachments:
            frame["attachments"] = [a.to_dict() for a in self.attachments]
        return frame


class _Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type",
             omit_defaults=True):
    """A keyed frame: ``type`` first, then its fields; a field left at its default is
    omitted (only optional fields have defaults)."""


class StateFrame(_Frame, tag="state", frozen=True):
    state: Literal["queued", "assigned", "closed", "offline"]


class QueueFrame(_Frame, tag="queue", frozen=True):
    position: int


class BusyFrame(_Frame, tag="busy", frozen=True):
    position: int


class AgentRef(msgspec.Struct, frozen=True):
    id: str
    name: str


class VisitorAssignedFrame(_Frame, tag="assigned", frozen=True):
    """Told to the visitor: which agent now serves them."""

    agent: AgentRef


class VisitorSummary(msgspec.Struct, frozen=True):
    """What agents are told about a visitor (``assigned`` frames, agent ``hello``)."""

    id: str
    name: str
    tags: list[str]  # a list, as the JSON client sees it (to_builtins keeps tuples)
    locale: str


class AgentAssignedFrame(_Frame, tag="assigned", frozen=True):
    """Told to the agent: a conversation is now theirs."""

    conversation_id: str
    visitor: VisitorSummary
    last_seq: int


class ClosedFrame(_Frame, tag="closed", frozen=True):
    conversation_id: str


class UnassignedFrame(_Frame, tag="unassigned", frozen=True):
    conversation_id: str


class ErrorFrame(_Frame, tag="error", frozen=True):
    """``id``: the client's id of the frame that failed, when it had one."""

    code: str
    message: str
    id: str | None = None


class AckFrame(_Frame, tag="ack", frozen=True):
    """A client's message is durable: its id and the seq it got."""

    id: str
    seq: int


class PongFrame(_Frame, tag="pong", frozen=True):
    pass


class ReconnectFrame(_Frame, tag="reconnect", frozen=True):
    """A draining node asks the client to reconnect (to another node) after ``after_ms``."""

    after_ms: int


class VisitorHelloFrame(_Frame, tag="hello", frozen=True):
    """``conversation_id`` is null and ``state`` ``"new"`` until the visitor's first message
    (issue 13). ``available``: whether someone could answer now (an agent of the visitor's
    pool online or away, within business hours), so the widget can offer the offline form up
    front; sent with ``new`` only. ``mail``: true when the server sends e-mail, so the widget
    may promise an answer by e-mail; absent otherwise."""

    visitor_id: str
    conversation_id: str | None
    last_seq: int
    state: str
    available: bool | None = None
    mail: bool = False


class RatedFrame(_Frame, tag="rated", frozen=True):
    """issue 13: a conversation's rating, to the visitor who gave it (the confirmation) and to
    the agent who had the chat."""

    conversation_id: str
    score: int
    comment: str = ""


class HelloConversation(msgspec.Struct, frozen=True, kw_only=True):
    """One conversation an agent holds, in their ``hello``."""

    conversation_id: str
    state: str
    visitor: VisitorSummary
    last_seq: int


class AgentHelloFrame(_Frame, tag="hello", frozen=True):
    agent_id: str
    name: str
    role: str
    conversations: list[HelloConversation]


class TypingFrame(_Frame, tag="typing", frozen=True):
    """Relayed to the peer; ``from_`` is who is typing."""

    on: bool
    conversation_id: str
    from_: Sender = msgspec.field(name="from")


class ReadFrame(_Frame, tag="read", frozen=True):
    """Relayed to the peer: they have read up to ``seq``."""

    seq: int
    conversation_id: str
    from_: Sender = msgspec.field(name="from")


Frame = (MessageFrame | StateFrame | QueueFrame | BusyFrame | VisitorAssignedFrame
         | AgentAssignedFrame | ClosedFrame | UnassignedFrame | ErrorFrame | AckFrame
         | PongFrame | ReconnectFrame | VisitorHelloFrame | AgentHelloFrame | TypingFrame
         | ReadFrame | RatedFrame)


class _VisitorLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def tag_list(self) -> tuple[str, ...]: ...
    @property
    def locale(self) -> str: ...


def visitor_summary(visitor_id: str, visitor: _VisitorLike | None) -> VisitorSummary:
    """The summary of a visitor; an unknown one reads as nameless, untagged, English."""
    if visitor is None:
        return VisitorSummary(id=visitor_id, name="", tags=[], locale="en")
    return VisitorSummary(id=visitor_id, name=visitor.name, tags=list(visitor.tag_list),
                          locale=visitor.locale)


def frame_dict(frame: Frame | VisitorSummary) -> dict[str, Any]:
    """The JSON-ready mapping the client receives."""
    if isinstance(frame, MessageFrame):
        return frame.to_dict()
    out: dict[str, Any] = msgspec.to_builtins(frame)
    return out


def frame_dicts(frames: Iterable[MessageFrame]) -> list[dict[str, Any]]:
    """Message frames as the client's JSON (history pages, resume)."""
    return [f.to_dict() for f in frames]

"""The wire format: parsing and validating client frames (pure; no I/O).

:func:`parse_frame` turns raw WebSocket text into a :class:`Frame` or raises :class:`FrameError`
carrying the docs/protocol.md error code, a message saying what to change and, for errors that end
the connection, a close code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from tidedesk import safejson
from tidedesk.frames import ErrorFrame, frame_dict

# Close codes of docs/protocol.md.
CLOSE_BAD_FRAME = 4400
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429
CLOSE_TRY_AGAIN_LATER = 1013

# Largest seq a client may name: JavaScript's largest exact integer (and far below what the
# databases' 64-bit columns hold, so a huge number is refused here instead of crashing a query).
MAX_SEQ = 2**53 - 1
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
AGENT_STATUSES = ("online", "away", "offline")
# Files one message may carry (issue 15), and the shape of an attachment id.
MAX_ATTACHMENTS = 10
ATTACHMENT_ID_RE = re.compile(r"^[0-9a-f]{32}$")

VISITOR_TYPES = frozenset({"message", "resume", "typing", "read", "ping", "rating"})
# issue 13: a visitor's rating of a closed conversation
RATING_MIN, RATING_MAX = 1, 5
RATING_COMMENT_MAX_CHARS = 1000
AGENT_TYPES = frozenset({"message", "note", "resume", "typing", "read", "status", "close",
                         "transfer", "ping"})


class FrameError(Exception):
    def __init__(self, code: str, message: str, close_code: int | None = None,
                 frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code
        self.frame_id = frame_id

    def to_frame(self) -> dict[str, Any]:
        return frame_dict(ErrorFrame(code=self.code, message=self.message, id=self.frame_id))


@dataclass(frozen=True)
class Frame:
    type: str
    data: dict[str, Any]

    @property
    def conversation_id(self) -> str | None:
        value = self.data.get("conversation_id")
        return value if isinstance(value, str) else None


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str,
             frame_id: str | None = None) -> Any:
    if key not in data:
        raise FrameError("missing_field", f"'{data.get('type')}' frames need '{key}' ({what})",
                         frame_id=frame_id)
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FrameError("invalid_field", f"'{key}' must be {what}", frame_id=frame_id)
    return value


def parse_frame(raw: str | bytes, *, role: str, max_body_chars: int) -> Frame:
    """Validate one client frame for ``role`` ('visitor' or 'agent')."""
    try:
        data = safejson.loads(raw)
    except safejson.JsonRefused as exc:
        if exc.code == "invalid_text":  # the client can fix its text: the socket stays open
            raise FrameError("invalid_text", exc.message) from None
        raise FrameError("bad_frame", "frames must be JSON objects like "
                         '{"type": "message", ...}' + f" ({exc.message})",
                         CLOSE_BAD_FRAME) from None
    if not isinstance(data, dict):
        raise FrameError("bad_frame", "frames must be JSON objects, not "
                         f"{type(data).__name__}", CLOSE_BAD_FRAME)
    kind = data.get("type")
    allowed = VISITOR_TYPES if role == "visitor" else AGENT_TYPES
    if not isinstance(kind, str) or kind not in allowed:
        raise FrameError("unknown_type", f"unknown frame type {kind!r}; a {role} may send: "
                         f"{', '.join(sorted(allowed))}")
    needs_conv = role == "agent" and kind in {"message", "note", "resume", "typing", "read",
                                              "close", "transfer"}
    if needs_conv:
        _require(data, "conversation_id", str, "the conversation's id (a string)")
    elif role == "visitor" and "conversation_id" in data and not isinstance(
            data["conversation_id"], str):
        raise FrameError("invalid_field", "'conversation_id' must be a string")

    if kind in ("message", "note"):
        frame_id = data.get("id") if isinstance(data.get("id"), str) else None
        client_id = _require(data, "id", str,
                             "a client-made unique id (1-64 of A-Z a-z 0-9 . _ : -)")
        if not CLIENT_ID_RE.match(client_id):
            raise FrameError("invalid_field", "'id' must be 1-64 characters of A-Z a-z 0-9 . _ : -",
                             frame_id=frame_id)
        attachments = check_attachment_ids(data.get("attachments"), frame_id)
        if attachments:
            data.setdefault("body", "")
        body = _require(data, "body", str, "the message text (a string)", frame_id)
        if not body.strip() and not attachments:
            raise FrameError("invalid_field", "'body' must not be empty", frame_id=frame_id)
        if len(body) > max_body_chars:
            raise FrameError("body_too_long", f"'body' has {len(body)} characters; the limit is "
                             f"{max_body_chars}: split the message", frame_id=frame_id)
    elif kind == "resume":
        after = _require(data, "after_seq", int, "the last seq you saw (an integer >= 0)")
        if not 0 <= after <= MAX_SEQ:
            raise FrameError("invalid_field", f"'after_seq' must be between 0 and {MAX_SEQ}")
    elif kind == "typing":
        _require(data, "on", bool, "true or false")
    elif kind == "read":
        seq = _require(data, "seq", int, "the seq read (an integer >= 0)")
        if not 0 <= seq <= MAX_SEQ:
            raise FrameError("invalid_field", f"'seq' must be between 0 and {MAX_SEQ}")
    elif kind == "rating":
        score = _require(data, "score", int, f"a whole number from {RATING_MIN} to {RATING_MAX}")
        if not RATING_MIN <= score <= RATING_MAX:
            raise FrameError("invalid_field", f"'score' must be from {RATING_MIN} to "
                             f"{RATING_MAX}, got {score}")
        comment = data.get("comment", "")
        if not isinstance(comment, str) or len(comment) > RATING_COMMENT_MAX_CHARS:
            raise FrameError("invalid_field", "'comment' must be a string of at most "
                             f"{RATING_COMMENT_MAX_CHARS} characters")
    elif kind == "status":
        status = _require(data, "status", str, "online, away or offline")
        if status not in AGENT_STATUSES:
            raise FrameError("invalid_field", "'status' must be online, away or offline")
    elif kind == "transfer":
        to_agent, to_pool = data.get("to_agent"), data.get("to_pool")
        if (to_agent is None) == (to_pool is None):
            raise FrameError("missing_field", "'transfer' needs exactly one of 'to_agent' "
                             "(an agent id) or 'to_pool' (a pool name)")
        if to_agent is not None and not isinstance(to_agent, str | int):
            raise FrameError("invalid_field", "'to_agent' must be an agent id")
        if to_pool is not None and (not isinstance(to_pool, str) or not to_pool):
            raise FrameError("invalid_field", "'to_pool' must be a pool name")
    return Frame(kind, data)


def check_attachment_ids(value: Any, frame_id: str | None = None) -> list[str]:
    """The ``attachments`` of a message (absent: none): at most :data:`MAX_ATTACHMENTS` ids
    from ``POST /api/v1/attachments``, each once."""
    if value is None:
        return []
    if (not isinstance(value, list) or len(value) > MAX_ATTACHMENTS
            or not all(isinstance(v, str) and ATTACHMENT_ID_RE.match(v) for v in value)
            or len(set(value)) != len(value)):
        raise FrameError("invalid_field", f"'attachments' must be a list of at most "
                         f"{MAX_ATTACHMENTS} different ids from POST /api/v1/attachments",
                         frame_id=frame_id)
    return list(value)


def encode(frame: dict[str, Any]) -> bytes:
    """A frame as the UTF-8 JSON text a client receives (msgspec: a tenth of ``json.dumps``'s
    time; the same compact JSON, non-ASCII text as it is)."""
    return msgspec.json.encode(frame)

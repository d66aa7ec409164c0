"""The frozen records the storage repositories return (never peewee rows or loose dicts).

Field names are the column names callers already read (``agent.pool_list``, ``conv.visitor_id``,
``visitor.tag_list``); encrypted columns arrive decrypted in the plain field (``visitor.email``,
``agent.totp_secret``), with the sealed value beside it where a tool needs it (``name_enc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Agent(_Record, frozen=True):
    id: int
    email: str
    name: str
    password_hash: str
    # The plaintext seed; "!undecryptable" when it is set but this process holds no key for it,
    # so "has 2FA" stays true and sign-in fails closed.
    totp_secret: str | None
    role: str
    pools: str  # comma-separated, as stored
    max_chats: int
    active: bool
    created_at: float

    @property
    def pool_list(self) -> tuple[str, ...]:
        return tuple(p for p in (x.strip() for x in self.pools.split(",")) if p)


class Visitor(_Record, frozen=True):
    id: str
    name: str
    email: str | None
    phone: str | None
    name_enc: str | None
    email_enc: str | None
    phone_enc: str | None
    tags: str  # comma-separated, as stored
    locale: str
    created_at: float
    site: str = "default"
    # issue 14: what the widget sent (page_url, referrer, user_agent, tz, browser, os), the
    # pre-chat fields, and the shop's customer id of a signed identify call.
    context: dict[str, Any] = {}
    fields: dict[str, str] = {}
    external_id: str | None = None

    @property
    def tag_list(self) -> tuple[str, ...]:
        return tuple(t for t in self.tags.split(",") if t)


class Conversation(_Record, frozen=True):
    id: str
    visitor_id: str
    state: str  # queued | assigned | closed | offline
    pool: str
    agent_id: str | None
    created_at: float
    updated_at: float
    site: str = "default"


class QueuedConversation(_Record, frozen=True):
    """A waiting conversation with its visitor's tags (what a router re-queues)."""

    id: str
    visitor_id: str
    pool: str
    created_at: float
    tags: tuple[str, ...]


class Ticket(_Record, frozen=True):
    id: int
    conversation_id: str
    visitor_id: str
    status: str  # open | pending | solved
    created_at: float
    assignee_id: str | None = None
    updated_at: float | None = None


class TicketView(_Record, frozen=True):
    """A ticket with its conversation and visitor, as the agents' tickets listing shows it."""

    id: int
    conversation_id: str
    status: str
    assignee_id: str | None
    state: str
    pool: str
    visitor_id: str
    created_at: float
    updated_at: float


class Rating(_Record, frozen=True):
    """issue 13: a visitor's rating of a closed conversation."""

    conversation_id: str
    visitor_id: str
    agent_id: str | None
    score: int
    comment: str
    created_at: float


class CannedResponse(_Record, frozen=True):
    id: int
    shortcut: str
    body: str
    owner_id: str | None = None  # None: shared by everyone


class AuditEntry(_Record, frozen=True):
    id: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class ApiToken(_Record, frozen=True):
    """An integration's token as listed (never the token itself: only its hash is stored)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_by: str
    created_at: float
    revoked_at: float | None


class Webhook(_Record, frozen=True):
    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_by: str
    created_at: float
    failing_since: float | None


class WebhookDelivery(_Record, frozen=True):
    id: str
    hook_id: str
    event_id: str
    event: str
    ts: float
    body: str
    status: str  # pending | delivered | failed
    attempts: int
    next_at: float
    last_code: int | None
    last_latency_ms: int | None
    last_error: str
    created_at: float
    updated_at: float


def as_dicts(records: Sequence[msgspec.Struct]) -> list[dict[str, Any]]:
    """Records as the JSON-ready mappings the REST API answers with."""
    out: list[dict[str, Any]] = msgspec.to_builtins(records)
    return out


class Attachment(_Record, frozen=True):
    """An uploaded file (issue 15). ``conversation_id`` and ``message_id`` are set once it
    is sent with a message; ``visitor_id`` is who may download it on the visitor's side ('' for
    a file sent with a private note)."""

    id: str
    uploader: str
    visitor_id: str
    conversation_id: str | None
    message_id: str | None
    name: str
    content_type: str
    size: int
    etag: str
    thumbnail: bool
    created_at: float

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
    status: str
    created_at: float


class CannedResponse(_Record, frozen=True):
    id: int
    shortcut: str
    body: str


class AuditEntry(_Record, frozen=True):
    id: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def as_dicts(records: Sequence[msgspec.Struct]) -> list[dict[str, Any]]:
    """Records as the JSON-ready mappings the REST API answers with."""
    out: list[dict[str, Any]] = msgspec.to_builtins(records)
    return out

"""Integrations: API tokens and webhooks (issue 16). Held by
:class:`~chatnode.service.ChatService` as ``service.integrations``; every change is audited
with the caller as the actor (``agent:<id>``, or ``token:<name>`` for an API token).

Tokens are looked up by their hash on each request (``Accounts.api_principal``), so a revoked
token is refused at once on every node. Webhooks live in the database; every node reads the
list again within ``tidedesk.webhooks.HOOK_CACHE_SECS``.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from chatnode.errors import ServiceError
from chatnode.queries import bounded_int
from tidedesk import events
from tidedesk.auth import SCOPES, Principal, api_token_hash, new_api_token
from tidedesk.settings import Settings
from tidedesk.storage import Storage
from tidedesk.webhooks import WebhookOutbox

NAME_MAX = 64
URL_MAX = 2048
# Lines of a hook's delivery log per request: the default, and the most one may ask for.
LOG_PAGE = 50
LOG_PAGE_MAX = 500


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ServiceError(400, "invalid_body", f"unknown field(s) {', '.join(sorted(unknown))}"
                           f"; allowed: {', '.join(sorted(allowed))}")


def parse_scopes(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, str) and s in SCOPES for s in value)):
        raise ServiceError(400, "invalid_field", "'scopes' must be a non-empty list of: "
                           f"{', '.join(SCOPES)}")
    return tuple(dict.fromkeys(value))


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > NAME_MAX:
        raise ServiceError(400, "invalid_field", f"'name' must be 1-{NAME_MAX} characters")
    return value.strip()


class Integrations:
    def __init__(self, *, settings: Settings, storage: Storage, outbox: WebhookOutbox,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.storage = storage
        self.outbox = outbox
        self.clock = clock

    # -- API tokens ----------------------------------------------------------------------------
    async def create_token(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A new token, shown this once; only its SHA-256 is stored."""
        _check_fields(body, {"name", "scopes"})
        name, scopes = parse_name(body.get("name")), parse_scopes(body.get("scopes"))
        token = new_api_token()
        record = await self.storage.api_tokens.create(
            name=name, scopes=scopes, token_hash=api_token_hash(token),
            created_by=principal.actor)
        await self.storage.audit.record(principal.actor, "admin.api_token.create", record.id,
                                        {"name": name, "scopes": list(scopes)})
        return {"id": record.id, "token": token, "name": name, "scopes": list(scopes)}

    async def tokens(self) -> list[dict[str, Any]]:
        return [{"id": t.id, "name": t.name, "scopes": list(t.scopes),
                 "created_by": t.created_by, "created_at": t.created_at}
                for t in await self.storage.api_tokens.all()]

    async def revoke_token(self, principal: Principal, token_id: str) -> dict[str, Any]:
        record = await self.storage.api_tokens.revoke(token_id)
        if record is None:
            raise ServiceError(404, "not_found", f"no live API token {token_id!r}")
        await self.storage.audit.record(principal.actor, "admin.api_token.revoke", token_id,
                                        {"name": record.name})
        return {"id": token_id, "revoked": True}

    # -- webhooks ------------------------------------------------------------------------------
    async def check_url(self, value: Any) -> str:
        """An http(s) URL whose host resolves to addresses a webhook may reach. (Each delivery
        checks again, at the address it connects to.)"""
        if not isinstance(value, str) or len(value) > URL_MAX:
            raise ServiceError(400, "invalid_field", f"'url' must be an http:// or https:// URL "
                               f"of at most {URL_MAX} characters")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceError(400, "invalid_field", "'url' must be an http:// or https:// URL "
                               "with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ServiceError(400, "invalid_field", "'url' has an invalid port") from None
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port, type=socket.SOCK_STREAM)
        except OSError:
            raise ServiceError(400, "invalid_field", f"'url': the host {parts.hostname!r} does "
                               "not resolve") from None
        allowed = self.outbox.allowed
        if not any(events.address_allowed(str(addr[4][0]), allowed) for addr in found):
            raise ServiceError(400, "invalid_field", f"'url': {parts.hostname} resolves only to "
                               "loopback, private or link-local addresses; webhooks may reach "
                               "public addresses, or networks listed in "
                               "TIDEDESK_WEBHOOK_ALLOWED_NETWORKS")
        return value

    async def create_webhook(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        _check_fields(body, {"url", "events"})
        url = await self.check_url(body.get("url"))
        try:
            subscribed = events.parse_events(body.get("events"))
        except ValueError as exc:
            raise ServiceError(400, "invalid_field", str(exc)) from None
        secret = secrets.token_hex(32)
        hook = await self.storage.webhooks.create(url=url, events=subscribed, secret=secret,
                                                  created_by=principal.actor)
        self.outbox.invalidate()
        await self.storage.audit.record(principal.actor, "admin.webhook.create", hook.id,
                                        {"url": url, "events": list(subscribed)})
        return {"id": hook.id, "secret": secret, "url": url, "events": list(subscribed)}

    async def webhooks(self) -> list[dict[str, Any]]:
        return [{"id": h.id, "url": h.url, "events": list(h.events),
                 "failing": h.failing_since is not None, "failing_since": h.failing_since,
                 "created_by": h.created_by, "created_at": h.created_at}
                for h in await self.storage.webhooks.all()]

    async def delete_webhook(self, principal: Principal, hook_id: str) -> dict[str, Any]:
        if not await self.storage.webhooks.delete(hook_id):
            raise ServiceError(404, "not_found", f"no webhook {hook_id!r}")
        self.outbox.invalidate()
        await self.storage.audit.record(principal.actor, "admin.webhook.delete", hook_id)
        return {"id": hook_id, "deleted": True}

    async def deliveries(self, hook_id: str, limit: str | None) -> list[dict[str, Any]]:
        """A hook's delivery log, newest first (``limit`` raw from the URL)."""
        page = bounded_int("limit", limit, LOG_PAGE, 1, LOG_PAGE_MAX) or LOG_PAGE
        if await self.storage.webhooks.get(hook_id) is None:
            raise ServiceError(404, "not_found", f"no webhook {hook_id!r}")
        return [{"id": d.id, "event_id": d.event_id, "event": d.event, "ts": d.ts,
                 "status": d.status, "attempts": d.attempts, "next_at": d.next_at,
                 "code": d.last_code, "latency_ms": d.last_latency_ms, "error": d.last_error,
                 "created_at": d.created_at, "updated_at": d.updated_at}
                for d in await self.storage.webhooks.log(hook_id, page)]

    async def resend(self, principal: Principal, hook_id: str,
                     body: dict[str, Any]) -> dict[str, Any]:
        """The "send again" action: the delivery goes out again now (same event id, so the
        receiver can tell it already has it)."""
        _check_fields(body, {"delivery_id"})
        delivery_id = body.get("delivery_id")
        if not isinstance(delivery_id, str):
            raise ServiceError(400, "invalid_field", "'delivery_id' must be the id of one of "
                               "this hook's deliveries (GET .../deliveries)")
        if not await self.storage.webhooks.resend(hook_id, delivery_id, self.clock()):
            raise ServiceError(404, "not_found", f"no delivery {delivery_id!r} of webhook "
                               f"{hook_id!r}")
        await self.storage.audit.record(principal.actor, "admin.webhook.resend", hook_id,
                                        {"delivery_id": delivery_id})
        await self.outbox.resend(delivery_id)
        return {"id": delivery_id, "status": "pending"}

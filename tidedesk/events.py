"""Webhook events (pure): their names, the payloads, the signature, the retry schedule and
which addresses a receiver may have.

This is the one seam the rest of the code emits through: a place where a conversation is
created, assigned or closed, a message stored or a rating given calls ``emit(name, data)`` on
the outbox (``tidedesk/webhooks.py``) with ``data`` from one of the builders below. Nothing
here touches a network, a disk or a clock (times are passed in).

Wire format (docs/protocol.md, "Webhooks"): a POST of ``{"id", "event", "ts", "data"}`` with
``X-Tidedesk-Signature: sha256=<hex HMAC-SHA256 of the raw body with the hook's secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable
from typing import Any, Protocol

CONVERSATION_CREATED = "conversation.created"
MESSAGE_CREATED = "message.created"
CONVERSATION_ASSIGNED = "conversation.assigned"
CONVERSATION_CLOSED = "conversation.closed"
RATING_CREATED = "rating.created"
TICKET_CREATED = "ticket.created"
TICKET_UPDATED = "ticket.updated"
EVENTS = (CONVERSATION_CREATED, MESSAGE_CREATED, CONVERSATION_ASSIGNED, CONVERSATION_CLOSED,
          RATING_CREATED, TICKET_CREATED, TICKET_UPDATED)

SIGNATURE_HEADER = "X-Tidedesk-Signature"
# A receiver that has not answered in this long failed this attempt (the protocol's 10 s).
DELIVERY_TIMEOUT_SECS = 10.0
# Delays before the retry after attempt n (1-based): the first retry within 30 s, growing,
# then hourly until RETRY_HORIZON_SECS after the event, when the hook is marked failing.
RETRY_DELAYS_SECS = (10, 30, 60, 120, 300, 600, 1800, 3600)
RETRY_HORIZON_SECS = 25 * 3600  # "at least 24 h" of retries, with an hour to spare


class Emitter(Protocol):
    """What emitting code holds: ``tidedesk.webhooks.WebhookOutbox.emit``, or
    :func:`no_events` where nothing listens (tools, tests of other parts)."""

    async def __call__(self, event: str, data: dict[str, Any], *,
                       event_id: str | None = None) -> None: ...


async def no_events(event: str, data: dict[str, Any], *, event_id: str | None = None) -> None:
    return None


def event_body(event: str, data: dict[str, Any], *, event_id: str, ts: float) -> bytes:
    """The exact bytes POSTed (and signed): compact JSON, keys in a fixed order."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    return json.dumps({"id": event_id, "event": event, "ts": ts, "data": data},
                      ensure_ascii=False, separators=(",", ":")).encode()


def message_event_id(conversation_id: str, message_id: str) -> str:
    """The id of a message's ``message.created`` event: the same however often the message
    is stored (redeliveries), so every hook gets it once."""
    return hashlib.sha256(f"{conversation_id}\n{message_id}".encode()).hexdigest()[:32]


def signature(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (constant time)."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


def retry_delay(attempts: int) -> int:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
    index = max(1, attempts) - 1
    return RETRY_DELAYS_SECS[min(index, len(RETRY_DELAYS_SECS) - 1)]


def next_attempt(attempts: int, created_at: float, now: float) -> float | None:
    """When to try again after ``attempts`` failures of an event made at ``created_at``; None
    once the retry horizon has passed (give up: the delivery fails, the hook is failing)."""
    due = now + retry_delay(attempts)
    if due - created_at > RETRY_HORIZON_SECS:
        return None
    return due


def parse_events(value: Any) -> tuple[str, ...]:
    """A hook's event list from a request body; ValueError naming the allowed events."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(e, str) and e in EVENTS for e in value)):
        raise ValueError(f"'events' must be a non-empty list of: {', '.join(EVENTS)}")
    return tuple(dict.fromkeys(value))


def parse_networks(value: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                  ...]:
    """CIDRs (``127.0.0.0/8``); ValueError naming the bad one."""
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network in CIDR form (like 10.0.0.0/8)") \
                from None
    return tuple(out)


def address_allowed(address: str, allowed: Iterable[ipaddress.IPv4Network
                                                    | ipaddress.IPv6Network]) -> bool:
    """May a webhook connect to ``address``? Only to public (global) addresses, unless the
    address falls in one of the ``allowed`` networks: loopback, private, link-local (the
    cloud metadata address 169.254.169.254 among them), shared, multicast and reserved
    addresses are refused. An IPv4 address mapped into IPv6 is judged as the IPv4 one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return True
    return ip.is_global and not ip.is_multicast


# -- payload builders (``data`` of each event) ----------------------------------------------
def conversation_data(*, conversation_id: str, visitor_id: str, state: str, pool: str,
                      agent_id: str | None = None, site: str = "default") -> dict[str, Any]:
    return {"conversation_id": conversation_id, "visitor_id": visitor_id, "state": state,
            "pool": pool, "agent_id": agent_id, "site": site}


def message_data(*, conversation_id: str, seq: int, message_id: str, sender: str,
                 sender_id: str, name: str, body: str, ts: float,
                 private: bool) -> dict[str, Any]:
    return {"conversation_id": conversation_id, "seq": seq, "id": message_id, "from": sender,
            "sender_id": sender_id, "name": name, "body": body, "ts": ts, "private": private}


def rating_data(*, conversation_id: str, score: int, comment: str = "") -> dict[str, Any]:
    return {"conversation_id": conversation_id, "score": score, "comment": comment}


def ticket_data(*, conversation_id: str, visitor_id: str, status: str,
                assignee: str | None = None) -> dict[str, Any]:
    return {"conversation_id": conversation_id, "visitor_id": visitor_id, "status": status,
            "assignee": assignee}

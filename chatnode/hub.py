"""The connections of this chat node, by who they belong to, and the delivery consumer.

Handlers register a :class:`Connection` (anything with ``send(frame)`` and ``close(code,
reason)``); deliveries arriving on this node's queue go to every connection of their ``to``.
A message frame is sent at most once per connection (dedupe by conversation and seq), so a
redelivery from the broker never shows a message twice. What each connection is (who,
principal, conversation, rate bucket) is kept beside, in ``hub.registry``
(:mod:`chatnode.connections`), by connection id.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from typing import Any, Protocol

from chatnode.connections import ConnectionRegistry
from tidedesk import metrics
from tidedesk.broker import Envelope
from tidedesk.envelopes import EnvelopeError, decode_delivery

log = logging.getLogger(__name__)

# Seqs remembered per connection for dedupe; older ones are covered by the client's own seq check.
SEEN_PER_CONNECTION = 2000


class Connection(Protocol):
    conn_id: str

    def send(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Hub:
    def __init__(self) -> None:
        # What each connection is (who, principal, conversation, rate bucket), by its id.
        self.registry = ConnectionRegistry()
        self._by_who: dict[str, dict[str, Connection]] = defaultdict(dict)
        self._seen: dict[str, OrderedDict[tuple[str, int], None]] = {}

    def register(self, who: str, conn: Connection) -> None:
        self._by_who[who][conn.conn_id] = conn
        self._seen[conn.conn_id] = OrderedDict()

    def unregister(self, who: str, conn: Connection) -> None:
        conns = self._by_who.get(who)
        if conns is not None:
            conns.pop(conn.conn_id, None)
            if not conns:
                del self._by_who[who]
        self._seen.pop(conn.conn_id, None)

    def connections(self) -> list[tuple[str, Connection]]:
        return [(who, c) for who, conns in self._by_who.items() for c in conns.values()]

    def count(self) -> int:
        return sum(len(c) for c in self._by_who.values())

    def mark_sent(self, conn_id: str, frame: dict[str, Any]) -> bool:
        """Record a message frame as sent; False if this connection already had it."""
        if frame.get("type") != "message":
            return True
        seen = self._seen.get(conn_id)
        if seen is None:
            return True
        key = (str(frame.get("conversation_id")), int(frame.get("seq", -1)))
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > SEEN_PER_CONNECTION:
            seen.popitem(last=False)
        return True

    def send(self, who: str, frame: dict[str, Any]) -> int:
        sent = 0
        for conn in list(self._by_who.get(who, {}).values()):
            if self.mark_sent(conn.conn_id, frame):
                conn.send(frame)
                sent += 1
        if sent and frame.get("type") == "message":
            metrics.MESSAGES_OUT.inc(sent)
            ts = frame.get("ts")
            if isinstance(ts, int | float):
                metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - ts))
        return sent

    async def on_delivery(self, envelope: Envelope) -> None:
        try:
            who, frame = decode_delivery(envelope.body)
        except EnvelopeError as exc:
            # Acknowledged and dropped: redelivering it would fail the same way forever.
            metrics.ENVELOPES_REJECTED.labels(queue="delivery").inc()
            log.error("dropping undecodable delivery",
                      extra={"error": str(exc), "body": envelope.body[:200]})
            return
        self.send(who, frame)

"""The connections of this chat node, by who they belong to, and the delivery consumer.

Handlers register a :class:`Connection` (anything with ``send(frame)`` and ``close(code,
reason)``); deliveries arriving on this node's queue go to every connection of each of their
recipients (one envelope may name several: the agent and the visitor's other tabs).
A message frame is sent at most once per connection (dedupe by conversation and seq), so a
redelivery from the broker never shows a message twice. What each connection is (who,
principal, conversation, rate bucket) is kept beside, in ``hub.registry``
(:mod:`chatnode.connections`), by connection id.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Protocol

from chatnode.connections import ConnectionRegistry
from tidedesk import metrics
from tidedesk.broker import Envelope
from tidedesk.envelopes import EnvelopeError, decode_deliveries

log = logging.getLogger(__name__)


class Connection(Protocol):
    conn_id: str

    def send(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Hub:
    def __init__(self) -> None:
        # What each connection is (who, principal, conversation, rate bucket), by its id.
        self.registry = ConnectionRegistry()
        self._by_who: dict[str, dict[str, Connection]] = defaultdict(dict)

    def register(self, who: str, conn: Connection) -> None:
        self._by_who[who][conn.conn_id] = conn

    def unregister(self, who: str, conn: Connection) -> None:
        conns = self._by_who.get(who)
        if conns is not None:
            conns.pop(conn.conn_id, None)
            if not conns:
                del self._by_who[who]

    def connections(self) -> list[tuple[str, Connection]]:
        return [(who, c) for who, conns in self._by_who.items() for c in conns.values()]

    def count(self) -> int:
        return sum(len(c) for c in self._by_who.values())

    def mark_sent(self, conn_id: str, frame: dict[str, Any]) -> bool:
        """Record a frame as sent on a connection; False if it is a message that connection
        already had (see :meth:`ConnectionState.first_showing`)."""
        state = self.registry.find(conn_id)
        return state is None or state.first_showing(frame)

    def send(self, who: str, frame: dict[str, Any]) -> int:
        sent = 0
        for conn in list(self._by_who.get(who, {}).values()):
            state = self.registry.find(conn.conn_id)
            if state is not None and state.hold(frame):
                continue  # sent behind the replay it waits for (ChatService.resume_on)
            if state is None or state.first_showing(frame):
                conn.send(frame)
                sent += 1
        if sent and frame.get("type") == "message":
            metrics.MESSAGES_OUT.inc(sent)
            ts = frame.get("ts")
            if isinstance(ts, int | float):
                metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - ts))
        return sent

    def on_delivery(self, envelope: Envelope) -> None:
        """A delivery envelope off this node's queue, handed to its sockets (it never waits:
        the broker runs it as :class:`~tidedesk.broker.AtOnce`)."""
        try:
            whos, frame = decode_deliveries(envelope.body)
        except EnvelopeError as exc:
            # Acknowledged and dropped: redelivering it would fail the same way forever.
            metrics.ENVELOPES_REJECTED.labels(queue="delivery").inc()
            log.error("dropping undecodable delivery",
                      extra={"error": str(exc), "body": envelope.body[:200]})
            return
        for who in whos:
            self.send(who, frame)

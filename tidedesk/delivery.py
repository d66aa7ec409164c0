"""Sending a frame to a visitor or agent wherever they are connected (any chat node)."""

from __future__ import annotations

from typing import Any

from tidedesk import metrics
from tidedesk.broker import Broker, node_queue
from tidedesk.envelopes import delivery_encoder
from tidedesk.store import Store


async def deliver(broker: Broker, store: Store, who: str, frame: dict[str, Any],
                  now: float, envelope_format: str = "binary") -> int:
    """Publish ``frame`` to the delivery queue of every node where ``who`` is connected;
    returns how many nodes that was (0: nobody to tell, they will resume on reconnect).
    ``envelope_format``: ``binary`` (v1) or ``json`` (docs/envelopes.md)."""
    nodes = await store.presence_nodes(who, now)
    if nodes:
        body = delivery_encoder(envelope_format)(who, frame)
        for node in nodes:
            await broker.publish(node_queue(node), body)
        metrics.DELIVERIES.inc(len(nodes))
    return len(nodes)

"""Sending a frame to a visitor or agent wherever they are connected (any chat node)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

from tidedesk import metrics
from tidedesk.broker import Broker, node_queue
from tidedesk.envelopes import delivery_encoder
from tidedesk.frames import Frame
from tidedesk.store import Store


async def deliver(broker: Broker, store: Store, who: str, frame: Frame | dict[str, Any],
                  now: float, envelope_format: str = "binary") -> int:
    """Publish ``frame`` to the delivery queue of every node where ``who`` is connected;
    returns how many nodes that was (0: nobody to tell, they will resume on reconnect).
    ``envelope_format``: ``binary`` (v1) or ``json`` (docs/envelopes.md)."""
    nodes = await store.presence_nodes(who, now)
    await publish_to(broker, nodes, who, frame, envelope_format)
    return len(nodes)


async def publish_to(broker: Broker, nodes: Iterable[str], who: str, frame: Frame | dict[str, Any],
                     envelope_format: str = "binary") -> None:
    """Publish ``frame`` for ``who`` to the delivery queue of each of ``nodes``."""
    body = b""
    count = 0
    for node in nodes:
        body = body or delivery_encoder(envelope_format)(who, frame)
        await broker.publish(node_queue(node), body)
        count += 1
    if count:
        metrics.DELIVERIES.inc(count)


def start_publish(broker: Broker, nodes: Iterable[str], who: str, frame: Frame | dict[str, Any],
                  envelope_format: str = "binary") -> Awaitable[Any]:
    """Like :func:`publish_to`, but every node's publish is started now, in this call's order
    relative to other calls (each broker writes a publish before its first await, and tasks
    first run in the order they were made); await the result for the confirms."""
    nodes = list(nodes)
    if not nodes:
        return _done()
    body = delivery_encoder(envelope_format)(who, frame)
    metrics.DELIVERIES.inc(len(nodes))
    return asyncio.gather(*(asyncio.ensure_future(broker.publish(node_queue(node), body))
                            for node in nodes))


async def _done() -> None:
    return None

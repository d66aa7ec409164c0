"""Sending a frame to a visitor or agent wherever they are connected (any chat node)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from tidedesk import metrics
from tidedesk.broker import Broker, node_queue
from tidedesk.envelopes import delivery_encoder, encode_deliveries, groups_deliveries
from tidedesk.frames import Frame
from tidedesk.store import Store


async def deliver(broker: Broker, store: Store, who: str, frame: Frame | dict[str, Any],
                  now: float, envelope_format: str = "binary") -> int:
    """Publish ``frame`` to the delivery queue of every node where ``who`` is connected;
    returns how many nodes that was (0: nobody to tell, they will resume on reconnect).
    ``envelope_format``: ``TIDEDESK_ENVELOPE_FORMAT`` (docs/envelopes.md)."""
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


def start_fanout(broker: Broker, recipients: Mapping[str, Iterable[str]],
                 frame: Frame | dict[str, Any], envelope_format: str = "binary"
                 ) -> Awaitable[Any]:
    """Publish ``frame`` to every recipient's nodes (``recipients``: who → their nodes, as
    :meth:`Store.message_fanout` returns them), every node's publish started
    now, in this call's order relative to other calls (each broker writes a publish before its
    first await, and tasks first run in the order they were made); await the result for the
    confirms.

    Recipients on the same node share one envelope (issue 17: a visitor's message used to go
    twice to a node that had both the agent and the visitor's other tab; twice published,
    consumed and acknowledged). ``binary-v1`` and ``json`` write one envelope per recipient,
    what nodes before grouped deliveries read (docs/envelopes.md)."""
    by_node: dict[str, list[str]] = {}
    for who, nodes in recipients.items():
        for node in nodes:
            by_node.setdefault(node, []).append(who)
    if not by_node:
        return _done()
    bodies: list[tuple[str, bytes]] = []
    if groups_deliveries(envelope_format):
        encoded: dict[tuple[str, ...], bytes] = {}
        for node, whos in by_node.items():
            key = tuple(whos)
            body = encoded.get(key)
            if body is None:
                body = encoded[key] = encode_deliveries(whos, frame)
            bodies.append((node, body))
    else:
        encode = delivery_encoder(envelope_format)
        single: dict[str, bytes] = {}
        for node, whos in by_node.items():
            for who in whos:
                body = single.get(who)
                if body is None:
                    body = single[who] = encode(who, frame)
                bodies.append((node, body))
    metrics.DELIVERIES.inc(len(bodies))
    if len(bodies) == 1:  # nearly always (one node has everybody): no gathering future
        return asyncio.ensure_future(broker.publish(node_queue(bodies[0][0]), bodies[0][1]))
    return asyncio.gather(*(asyncio.ensure_future(broker.publish(node_queue(node), body))
                            for node, body in bodies))


async def _done() -> None:
    return None

"""RabbitMQ seen from outside the code under test: what a queue holds (tests and benches)."""

from __future__ import annotations

import pika

from tidedesk.broker_batches import BATCH_CONTENT_TYPE, split_batch


def drain_messages(url: str, queue: str) -> list[tuple[str | None, bytes]]:
    """Every AMQP message in ``queue`` of the broker at ``url`` (an AMQP URL with its vhost),
    in order, taken out of it: (content type, body)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        out: list[tuple[str | None, bytes]] = []
        while True:
            method, props, data = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props.content_type, data))
    finally:
        conn.close()


def drain(url: str, queue: str) -> list[bytes]:
    """Every envelope in ``queue``, in order, taken out of it (broker batches split, as a
    consumer sees them)."""
    out: list[bytes] = []
    for content_type, data in drain_messages(url, queue):
        out.extend(split_batch(data) if content_type == BATCH_CONTENT_TYPE else [data])
    return out

"""RabbitMQ seen from outside the code under test: what a queue holds (tests and benches)."""

from __future__ import annotations

import pika


def drain(url: str, queue: str) -> list[bytes]:
    """Every message in ``queue`` of the broker at ``url`` (an AMQP URL with its vhost), in
    order, taken out of it."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        out: list[bytes] = []
        while True:
            method, _, data = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(data)
    finally:
        conn.close()

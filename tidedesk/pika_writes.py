"""Fewer, larger socket writes for a pika connection (used by :mod:`tidedesk.rabbitmq` and the
P3 benchmark, so both send frames the same way)."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

# pika hands the socket one send() per frame, three per message. Joining what is queued into
# chunks of up to this size cuts syscalls and TCP segments on both ends (see
# bench/p3_broker_confirms.py --no-coalesce).
WRITE_COALESCE_BYTES = 128 * 1024


def coalesce_writes(conn: Any) -> bool:
    """Make one pika connection send its queued frames in large chunks.

    It replaces the ``_produce`` method of this connection's transport (pika 1.x internals);
    when those internals are not what this expects, nothing changes and it returns False.
    """
    transport = getattr(conn, "_transport", None)
    bufs = getattr(transport, "_tx_buffers", None)
    produce = getattr(transport, "_produce", None)
    if not isinstance(bufs, deque) or not callable(produce):
        log.info("pika transport internals changed; frames are sent one by one")
        return False

    def coalescing_produce() -> None:
        if len(bufs) > 1:
            merged: list[bytes] = []
            group: list[bytes] = []
            size = 0
            for chunk in bufs:
                if group and size + len(chunk) > WRITE_COALESCE_BYTES:
                    merged.append(b"".join(group))
                    group, size = [], 0
                group.append(chunk)
                size += len(chunk)
            merged.append(b"".join(group))
            bufs.clear()
            bufs.extend(merged)
        produce()

    setattr(transport, "_produce", coalescing_produce)  # noqa: B010 - private on purpose
    return True

"""Broker batches (issue 17): several envelopes for one queue in one AMQP message.

What a batch is on the wire: an AMQP message with content type :data:`BATCH_CONTENT_TYPE` whose
body is a MessagePack array of the envelopes' bytes (each a ``bin``), in publish order. One
publisher confirm then covers every envelope in it, and the consumer acknowledges it once, after
every envelope in it was handled (docs/envelopes.md, "Broker batches").

A lone envelope is never wrapped: it goes as it always did (no content type, the envelope's own
bytes), so a batch of one is what any node of any version reads.

No pika and no event loop here: the broker adapter (``tidedesk.rabbitmq``) gathers and sends.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

BATCH_CONTENT_TYPE = "application/x-tidedesk-batch"
# A batch holds at most this many envelopes or bytes of them; a fuller one is sent at once and
# the next envelope starts a new one. 64 x 200-byte messages is ~13 KB, far below RabbitMQ's
# frame size; P7Q50 gathers 6-11 per message, so the cap only bounds the worst case: how many
# handlers one prefetched message starts (64 x prefetch) and how much one nack sends back.
BATCH_MAX_BODIES = 64
BATCH_MAX_BYTES = 128 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[bytes])


class BatchError(ValueError):
    """A message marked as a batch whose body is not a MessagePack array of byte strings."""


def encode_batch(bodies: Sequence[bytes]) -> bytes:
    """The body of the AMQP message carrying ``bodies`` (two or more)."""
    return _encoder.encode(bodies)


def split_batch(body: bytes) -> list[bytes]:
    """The envelopes of a batch, in publish order; :class:`BatchError` when it is not one."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BatchError(f"not a broker batch ({BATCH_CONTENT_TYPE}): {exc}") from None


def batch_takes(count: int, size: int, more: int) -> bool:
    """Whether a batch of ``count`` envelopes, ``size`` bytes in all, takes one of ``more``
    bytes (an empty one takes any, however large)."""
    return count == 0 or (count < BATCH_MAX_BODIES and size + more <= BATCH_MAX_BYTES)

"""Broker batches (issue 17, tidedesk/broker_batches.py): what one pass of the event loop
publishes to a queue goes to RabbitMQ as one AMQP message, under one confirm.

The framing on its own, then the real RabbitMQ on 127.0.0.1:5672: a burst arrives as batches
and is handed to the handler split and in publish order; a lone envelope is byte for byte what
nodes before batches wrote (and read); one failing envelope requeues its whole batch, which
comes back and is then handled by an idempotent handler once; ``binary-v2`` sends no batches.
"""

from __future__ import annotations

import asyncio

import msgspec
import pika
import pytest

from tests.support.rabbit import drain, drain_messages
from tests.support.waiting import wait_until_async
from tests.test_broker_contract import AMQP_URL, Ctx, rabbit
from tidedesk.broker import AtOnce, Envelope, node_queue
from tidedesk.broker_batches import (
    BATCH_CONTENT_TYPE,
    BATCH_MAX_BODIES,
    BATCH_MAX_BYTES,
    BatchError,
    batch_takes,
    encode_batch,
    split_batch,
)
from tidedesk.envelopes import CloseEvent, batches_publishes, decode_inbound, encode_inbound
from tidedesk.rabbitmq import RabbitBroker
from tidedesk.runtime import make_broker
from tidedesk.settings import load_settings


# -- the framing ----------------------------------------------------------------------------
def test_a_batch_is_a_messagepack_array_of_the_envelopes_in_order() -> None:
    bodies = [b"\x01one", b"", b"{\"kind\": \"close\"}", bytes(range(256))]
    wire = encode_batch(bodies)
    assert msgspec.msgpack.decode(wire) == bodies
    assert split_batch(wire) == bodies


@pytest.mark.parametrize("wire", [b"", b"\x01", msgspec.msgpack.encode([1, 2]),
                                  msgspec.msgpack.encode({"a": b"x"}), b"\x92\xc4\x05ab"])
def test_what_is_not_a_batch_is_refused(wire: bytes) -> None:
    with pytest.raises(BatchError, match="not a broker batch"):
        split_batch(wire)


@pytest.mark.parametrize("name, count, size, more, takes", [
    ("empty takes anything", 0, 0, 10 * BATCH_MAX_BYTES, True),
    ("room left", 3, 600, 200, True),
    ("body cap", BATCH_MAX_BODIES, 100, 1, False),
    ("one below the body cap", BATCH_MAX_BODIES - 1, 100, 1, True),
    ("bytes exactly at the cap", 2, BATCH_MAX_BYTES - 10, 10, True),
    ("bytes over the cap", 2, BATCH_MAX_BYTES - 10, 11, False),
])
def test_batch_limits(name: str, count: int, size: int, more: int, takes: bool) -> None:
    assert batch_takes(count, size, more) is takes, name


@pytest.mark.parametrize("envelope_format, batches", [
    ("binary", True), ("binary-v2", False), ("binary-v1", False), ("json", False)])
def test_only_the_newest_format_batches(envelope_format: str, batches: bool) -> None:
    assert batches_publishes(envelope_format) is batches
    settings = load_settings({}, broker_url=AMQP_URL, envelope_format=envelope_format)
    broker = make_broker(settings)
    assert isinstance(broker, RabbitBroker) and broker._batch is batches


# -- on RabbitMQ -----------------------------------------------------------------------------
def _bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [encode_inbound(CloseEvent(conversation_id=f"{prefix}{i}", by="t")) for i in range(n)]


@pytest.mark.rabbitmq
def test_a_burst_goes_as_batches_and_is_handled_split_and_in_order() -> None:
    """200 publishes in one pass: four AMQP messages of at most 64; then a lone one and a
    second burst. The handler starts on every envelope in publish order, across batches and
    lone messages alike (the router's per-conversation order rests on it)."""

    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        await b.declare_node_queue(ctx.node("a"))
        q = node_queue(ctx.node("a"))
        first, lone, second = _bodies(200, "a"), _bodies(1, "b"), _bodies(30, "c")
        await asyncio.gather(*(b.publish(q, m) for m in first))
        await b.publish(q, lone[0])
        await asyncio.gather(*(b.publish(q, m) for m in second))
        messages = drain_messages(AMQP_URL, q)
        assert [ct for ct, _ in messages] == [BATCH_CONTENT_TYPE] * 4 + [None] + \
            [BATCH_CONTENT_TYPE]
        assert [len(split_batch(m)) for ct, m in messages if ct] == [64, 64, 64, 8, 30]
        assert messages[4][1] == lone[0]
        everything = first + lone + second

        # the same again, to a consumer this time
        started: list[bytes] = []

        async def handler(env: Envelope) -> None:
            started.append(env.body)  # before any await: the order handlers were started in
            await asyncio.sleep(0.001)

        await b.consume(q, handler, prefetch=2)  # prefetch counts AMQP messages, not envelopes
        await asyncio.gather(*(b.publish(q, m) for m in first))
        await b.publish(q, lone[0])
        await asyncio.gather(*(b.publish(q, m) for m in second))
        await wait_until_async("every envelope handled", lambda: len(started) >= 231, 10)
        assert started == everything
        await asyncio.sleep(0.1)
        await b.stop_consuming()
        assert drain(AMQP_URL, q) == []  # every batch acked

    rabbit(body)


@pytest.mark.rabbitmq
def test_a_lone_envelope_is_byte_for_byte_what_older_nodes_write_and_read() -> None:
    """One publish in a pass is not wrapped: no content type, the envelope's own bytes; a
    consumer that ignores the properties (every version before batches) decodes it."""

    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        [env] = _bodies(1)
        await b.publish(ctx.inbound, env)
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            method, props, data = conn.channel().basic_get(ctx.inbound, auto_ack=True)
        finally:
            conn.close()
        assert method is not None
        assert data == env and props.content_type is None and props.delivery_mode == 2
        assert decode_inbound(data) == CloseEvent(conversation_id="m0", by="t")

    rabbit(body)


@pytest.mark.rabbitmq
def test_binary_v2_sends_no_batches_so_older_consumers_read_every_envelope() -> None:
    """``batch=False`` (TIDEDESK_ENVELOPE_FORMAT=binary-v2 and older): a burst goes as one AMQP
    message per envelope, each what an old consumer decodes."""

    async def body(ctx: Ctx) -> None:
        b = await ctx.broker(batch=False)
        bodies = _bodies(100)
        await asyncio.gather(*(b.publish(ctx.inbound, m) for m in bodies))
        messages = drain_messages(AMQP_URL, ctx.inbound)
        assert messages == [(None, m) for m in bodies]
        assert [decode_inbound(m) for _, m in messages] == \
            [CloseEvent(conversation_id=f"m{i}", by="t") for i in range(100)]

    rabbit(body)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("same_consumer", [True, False])
@pytest.mark.parametrize("at_once", [False, True], ids=["tasks", "at-once"])
def test_one_failing_envelope_requeues_its_batch_and_each_takes_effect_once(
        same_consumer: bool, at_once: bool) -> None:
    """One envelope of a batch of 20 fails the first time: the batch is nacked whole and comes
    back redelivered. To the same consumer, only the failed envelope is handled again (it
    remembers which succeeded); to another one (the first is gone), all 20 are, in order, and a
    handler idempotent on the envelope (as the router is on client ids and states) ends with
    every effect exactly once. Nothing is left in the queue. The same for a handler that never
    waits (``AtOnce``, a chat node's deliveries), run in the delivery callback."""

    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        bodies = _bodies(20)
        seen: list[tuple[bytes, bool]] = []
        applied: dict[bytes, int] = {}  # envelope -> times its effect was applied
        failed_once: set[bytes] = set()

        def effect(env: Envelope) -> None:
            if env.body == bodies[7] and env.body not in failed_once:
                failed_once.add(env.body)
                raise RuntimeError("the database is down")
            if env.body not in applied:  # idempotent: one already applied changes nothing
                applied[env.body] = applied.get(env.body, 0) + 1

        async def handler(env: Envelope) -> None:
            seen.append((env.body, env.redelivered))
            await asyncio.sleep(0)
            effect(env)

        def sync_handler(env: Envelope) -> None:
            seen.append((env.body, env.redelivered))
            effect(env)

        consumer = b if same_consumer else await ctx.broker()
        await consumer.consume(ctx.inbound, AtOnce(sync_handler) if at_once else handler)
        if not same_consumer:
            assert isinstance(consumer, RabbitBroker)
            consumer._partly_done.clear()  # what a consumer that did not see it first knows
            consumer._remember_partly_done = lambda *_: None  # type: ignore[method-assign]
        await asyncio.gather(*(b.publish(ctx.inbound, m) for m in bodies))
        again = [(bodies[7], True)] if same_consumer else [(m, True) for m in bodies]
        await wait_until_async("the batch redelivered and handled",
                               lambda: len(seen) >= 20 + len(again), 10)
        await asyncio.sleep(0.2)
        assert seen == [(m, False) for m in bodies] + again
        assert applied == dict.fromkeys(bodies, 1)
        await consumer.stop_consuming()
        assert drain(AMQP_URL, ctx.inbound) == []

    rabbit(body)


@pytest.mark.rabbitmq
def test_an_undecodable_batch_is_dropped_not_redelivered_forever() -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        seen: list[bytes] = []

        async def handler(env: Envelope) -> None:
            seen.append(env.body)

        await b.consume(ctx.inbound, handler)
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            ch = conn.channel()
            ch.basic_publish("", ctx.inbound, b"\x01not an array",
                             pika.BasicProperties(content_type=BATCH_CONTENT_TYPE))
            ch.basic_publish("", ctx.inbound, b"after")
        finally:
            conn.close()
        await wait_until_async("the next message handled", lambda: seen == [b"after"], 10)
        await b.stop_consuming()
        assert drain(AMQP_URL, ctx.inbound) == []

    rabbit(body)

"""One contract for the broker seam, run against MemoryBroker and RabbitBroker.

RabbitMQ runs use the real server on 127.0.0.1:5672 (guest/guest) with queue names unique to
each test, deleted afterwards. Queue names come from the fixture: ``ctx.inbound`` is this
test's inbound queue (publish waits for the consumer's ack on the memory broker, for the
broker's confirm on RabbitMQ), ``ctx.node(name)`` a node id whose queue is plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.support.forward import half_open
from tests.support.processes import free_port
from tests.support.rabbit import drain
from tests.support.waiting import wait_until_async
from tidedesk.broker import (
    Broker,
    BrokerUnavailable,
    Envelope,
    MemoryBroker,
    node_queue,
)
from tidedesk.rabbitmq import RabbitBroker

AMQP_HOST = os.environ.get("TIDEDESK_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TIDEDESK_TEST_AMQP_PORT", "5672"))
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F"


def _blocking() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


def _delete_queues(names: list[str]) -> None:
    conn = _blocking()
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
    finally:
        conn.close()


def _queue_exists(name: str) -> bool:
    conn = _blocking()
    try:
        conn.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    finally:
        if conn.is_open:
            conn.close()


@dataclass
class Ctx:
    kind: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    brokers: list[Broker] = field(default_factory=list)

    @property
    def inbound(self) -> str:
        return f"tidedesk-test.{self.tag}.inbound"

    def node(self, name: str) -> str:
        return f"test-{self.tag}-{name}"

    def queues(self) -> list[str]:
        return [self.inbound] + [node_queue(self.node(n)) for n in ("a", "b", "c")]

    async def broker(self, **kwargs: Any) -> Broker:
        """A started broker; closed by the runner. Several share the same queues on RabbitMQ."""
        b: Broker
        if self.kind == "memory":
            b = MemoryBroker(confirm_on_ack=(self.inbound,), confirm_timeout_s=5)
        else:
            queue_type = "quorum" if self.kind == "rabbitmq-quorum" else "classic"
            b = RabbitBroker(kwargs.pop("url", AMQP_URL), inbound_queue=self.inbound,
                             inbound_queue_type=queue_type,
                             reconnect_min_s=0.05, reconnect_max_s=0.5, **kwargs)
        self.brokers.append(b)
        await b.start()
        return b


Body = Callable[[Ctx], Awaitable[None]]
Runner = Callable[[Body], None]


def _runner(kind: str) -> Runner:
    def run(body: Body) -> None:
        ctx = Ctx(kind)

        async def main() -> None:
            try:
                await asyncio.wait_for(body(ctx), 30)
            finally:
                for b in ctx.brokers:
                    await b.close()

        try:
            asyncio.run(main())
        finally:
            if kind.startswith("rabbitmq"):
                _delete_queues(ctx.queues())

    return run


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
                        pytest.param("rabbitmq-quorum", marks=pytest.mark.rabbitmq)])
def run(request: pytest.FixtureRequest) -> Runner:
    """``rabbitmq-quorum``: the inbound queue is a quorum queue (node queues stay classic)."""
    return _runner(request.param)


class Collector:
    """A handler that records envelopes and lets a test wait for a count."""

    def __init__(self) -> None:
        self.seen: list[Envelope] = []
        self._changed = asyncio.Event()

    async def __call__(self, env: Envelope) -> None:
        self.seen.append(env)
        self._changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [e.body for e in self.seen]

    async def wait_for(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.seen)} of {n} messages")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


# -- the contract ---------------------------------------------------------------------------

def test_ready_after_start_and_not_after_close(run: Runner) -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        assert b.ready
        await b.close()
        assert not b.ready
        with pytest.raises(BrokerUnavailable):
            await b.publish(node_queue(ctx.node("a")), b"after close")
        with pytest.raises(BrokerUnavailable):
            await b.publish(ctx.inbound, b"after close")

    run(body)


def test_publish_consume_ack(run: Runner) -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        await b.declare_node_queue(ctx.node("a"))
        q = node_queue(ctx.node("a"))
        sent = [f"m{i}".encode() for i in range(20)]
        for m in sent:
            await b.publish(q, m)
        got = Collector()
        await b.consume(q, got, prefetch=1)
        await got.wait_for(20)
        assert got.bodies == sent  # one consumer, prefetch 1: publish order
        assert not any(e.redelivered for e in got.seen)
        await b.stop_consuming()
        # everything was acknowledged: a new consumer finds nothing
        again = Collector()
        await b.consume(q, again, prefetch=10)
        await asyncio.sleep(0.3)
        assert again.seen == []

    run(body)


def test_inbound_publish_returns_once_safe(run: Runner) -> None:
    """Consume first: on the memory broker publish waits for this consumer's ack."""

    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        got = Collector()
        await b.consume(ctx.inbound, got, prefetch=10)
        sent = {f"in{i}".encode() for i in range(30)}
        await asyncio.gather(*(b.publish(ctx.inbound, m) for m in sent))
        await got.wait_for(len(sent))
        assert set(got.bodies) == sent and len(got.bodies) == len(sent)

    run(body)


async def _database_hiccup() -> None:
    raise RuntimeError("database hiccup")


async def _call_cut_short() -> None:
    # Something the handler awaits is cancelled, not the consumer (a shared Redis round trip
    # cut short, say): CancelledError reaches the handler like any other failure.
    other: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(other.cancel)
    await other


@pytest.mark.parametrize("fail", [_database_hiccup, _call_cut_short])
def test_failing_handler_gets_the_message_redelivered(
        run: Runner, fail: Callable[[], Awaitable[None]]) -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        await b.declare_node_queue(ctx.node("a"))
        q = node_queue(ctx.node("a"))
        seen: list[tuple[bytes, bool]] = []
        done = asyncio.Event()
        failed: set[bytes] = set()

        async def flaky(env: Envelope) -> None:
            seen.append((env.body, env.redelivered))
            if env.body not in failed:
                failed.add(env.body)
                await fail()
            if len({m for m, _ in seen}) == 3 and len(seen) >= 6:
                done.set()

        await b.consume(q, flaky, prefetch=1)  # one consumer: a failure must not end it
        for m in (b"x", b"y", b"z"):
            await b.publish(q, m)
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.2)  # nothing further arrives: the second attempts were acked
        for m in (b"x", b"y", b"z"):
            assert [r for body_, r in seen if body_ == m] == [False, True]

    run(body)


def test_prefetch_bounds_concurrency(run: Runner) -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        await b.declare_node_queue(ctx.node("a"))
        q = node_queue(ctx.node("a"))
        active = peak = finished = 0

        async def slow(env: Envelope) -> None:
            nonlocal active, peak, finished
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.03)
            active -= 1
            finished += 1

        for i in range(24):
            await b.publish(q, str(i).encode())
        await b.consume(q, slow, prefetch=3)
        deadline = time.monotonic() + 10
        while finished < 24 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert finished == 24
        assert peak == 3

    run(body)


def test_stop_consuming_lets_running_handlers_finish(run: Runner) -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        await b.declare_node_queue(ctx.node("a"))
        q = node_queue(ctx.node("a"))
        gate = asyncio.Event()
        started: list[bytes] = []
        finished: list[bytes] = []

        async def held(env: Envelope) -> None:
            started.append(env.body)
            await gate.wait()
            finished.append(env.body)

        await b.publish(q, b"one")
        await b.publish(q, b"two")
        await b.consume(q, held, prefetch=2)
        await wait_until_async("both handlers to start", lambda: len(started) >= 2, 10,
                               every=0.01)
        stopping = asyncio.create_task(b.stop_consuming())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waits for the running handlers
        await b.publish(q, b"three")  # not taken by the stopped consumer
        gate.set()
        await asyncio.wait_for(stopping, 5)
        assert sorted(finished) == [b"one", b"two"]
        await asyncio.sleep(0.2)
        assert sorted(started) == [b"one", b"two"]
        later = Collector()
        await b.consume(q, later, prefetch=10)
        await later.wait_for(1)
        await asyncio.sleep(0.2)
        assert later.bodies == [b"three"]  # one and two were acked, not redelivered

    run(body)


def test_node_queues_are_separate_and_declaring_is_idempotent(run: Runner) -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        for _ in range(2):
            await b.declare_node_queue(ctx.node("a"))
            await b.declare_node_queue(ctx.node("b"))
        to_a, to_b = Collector(), Collector()
        await b.consume(node_queue(ctx.node("a")), to_a, prefetch=10)
        await b.consume(node_queue(ctx.node("b")), to_b, prefetch=10)
        await b.publish(node_queue(ctx.node("a")), b"for a")
        await b.publish(node_queue(ctx.node("b")), b"for b1")
        await b.publish(node_queue(ctx.node("b")), b"for b2")
        await to_a.wait_for(1)
        await to_b.wait_for(2)
        await asyncio.sleep(0.1)
        assert to_a.bodies == [b"for a"]
        assert to_b.bodies == [b"for b1", b"for b2"]

    run(body)


def test_two_brokers_share_the_inbound_queue(run: Runner) -> None:
    """Chat node and router are two processes on RabbitMQ; on the memory broker, one object."""

    async def body(ctx: Ctx) -> None:
        chat = await ctx.broker()
        router = chat if ctx.kind == "memory" else await ctx.broker()
        got = Collector()
        await router.consume(ctx.inbound, got, prefetch=50)
        sent = [f"c{i}".encode() for i in range(100)]
        await asyncio.gather(*(chat.publish(ctx.inbound, m) for m in sent))
        await got.wait_for(100)
        assert sorted(got.bodies) == sorted(sent)

    run(body)


# -- RabbitMQ only: topology, outages and confirms -----------------------------------------

rabbit = _runner("rabbitmq")


@pytest.mark.rabbitmq
def test_rabbit_topology_is_durable_and_messages_persistent() -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        await b.declare_node_queue(ctx.node("a"))
        await b.publish(node_queue(ctx.node("a")), b"persist me")
        await b.publish(ctx.inbound, b"inbound")
        await b.close()
        conn = _blocking()
        try:
            ch = conn.channel()
            for name in (ctx.inbound, node_queue(ctx.node("a"))):
                # redeclaring with durable=True and no other args would fail if they differed
                ok = ch.queue_declare(name, passive=True)
                assert ok.method.message_count == 1
                method, props, _ = ch.basic_get(name, auto_ack=True)
                assert method is not None and props.delivery_mode == 2
        finally:
            conn.close()

    rabbit(body)


@pytest.mark.rabbitmq
def test_rabbit_node_queue_expires_when_its_node_is_gone() -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker(node_queue_ttl_ms=300)
        await b.declare_node_queue(ctx.node("a"))
        assert _queue_exists(node_queue(ctx.node("a")))
        await b.close()
        # Look only once: a passive declare counts as use and would renew the lease.
        await asyncio.sleep(1.5)
        assert not _queue_exists(node_queue(ctx.node("a")))

    rabbit(body)


@pytest.mark.rabbitmq
def test_rabbit_unreachable_broker_is_not_ready_and_publish_raises() -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker(url="amqp://guest:guest@127.0.0.1:9/%2F")  # discard port: refused
        assert not b.ready
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await b.publish(ctx.inbound, b"nowhere")
        assert time.monotonic() - t0 < 0.1
        await b.declare_node_queue(ctx.node("a"))  # remembered for when it connects
        await b.consume(ctx.inbound, Collector())

    rabbit(body)


class Proxy:
    """A TCP proxy in front of RabbitMQ that a test can cut and restore."""

    def __init__(self) -> None:
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self.cut()
            self._server.close()
            await self._server.wait_closed()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not self.up:
            w.transport.abort()
            return
        ur, uw = await asyncio.open_connection(AMQP_HOST, AMQP_PORT)
        self._links.append((w, uw))
        for src, dst in ((r, uw), (ur, w)):
            t = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()

    def cut(self) -> None:
        self.up = False
        for w, uw in self._links:
            w.transport.abort()
            uw.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.up = True


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.rabbitmq
def test_rabbit_reconnects_and_resumes_consuming() -> None:
    async def body(ctx: Ctx) -> None:
        async with Proxy().running() as proxy:
            b = await ctx.broker(url=proxy.url)
            assert b.ready
            await b.declare_node_queue(ctx.node("a"))
            q = node_queue(ctx.node("a"))
            got = Collector()
            await b.consume(q, got, prefetch=10)
            await b.publish(q, b"before")
            await got.wait_for(1)
            proxy.cut()
            await _until(lambda: not b.ready, 5, "ready stayed True after the connection died")
            t0 = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await b.publish(q, b"while down")
            assert time.monotonic() - t0 < 0.1  # at once, not after a timeout
            proxy.restore()
            await _until(lambda: b.ready, 10, "did not reconnect")
            await b.publish(q, b"after")
            await _until(lambda: b"after" in got.bodies, 10, "nothing consumed after reconnecting")
            # At least once: "before" comes again when its ack died with the connection.
            assert list(dict.fromkeys(got.bodies)) == [b"before", b"after"]
            assert got.bodies.count(b"before") <= 2

    rabbit(body)


@pytest.mark.rabbitmq
def test_rabbit_in_flight_publishes_fail_or_are_stored_never_lost() -> None:
    """Cut the connection under a burst: each publish returns or raises BrokerUnavailable, and
    every one that returned is in the queue afterwards. Publishes caught in flight by the cut
    are written again on the next connection (issue 17), so the streams carry on."""

    async def body(ctx: Ctx) -> None:
        async with Proxy().running() as proxy:
            b = await ctx.broker(url=proxy.url)
            await b.declare_node_queue(ctx.node("a"))
            q = node_queue(ctx.node("a"))
            confirmed: list[bytes] = []
            errors: list[BaseException] = []
            stop = asyncio.Event()

            async def stream(n: int) -> None:
                # keeps one publish in flight; a failed one is sent again, as a client would
                for i in range(100_000):
                    if stop.is_set():
                        return
                    m = f"s{n}-{i}".encode()
                    try:
                        await b.publish(q, m)
                    except Exception as exc:
                        errors.append(exc)
                        await asyncio.sleep(0.05)
                        continue
                    confirmed.append(m)

            streams = [asyncio.create_task(stream(n)) for n in range(50)]
            await _until(lambda: len(confirmed) >= 500, 10, "no confirms arrived")
            proxy.cut()
            at_cut = len(confirmed)
            await asyncio.sleep(0.3)  # down for a moment, then back
            proxy.restore()
            await _until(lambda: len(confirmed) >= at_cut + 500, 15, "no confirms after the cut")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*streams), 15)
            assert all(isinstance(e, BrokerUnavailable) for e in errors), errors[:3]
            assert not [e for e in errors if "before the confirm" in str(e)], \
                "a publish caught by the cut was failed instead of written again"
            await b.close()
        assert set(confirmed) <= set(drain(AMQP_URL, q))

    rabbit(body)


@pytest.mark.rabbitmq
def test_rabbit_half_open_connection_is_dropped_quickly_and_nothing_is_lost() -> None:
    """issue 17: the broker goes silent without closing the connection (tests/support/forward's
    half-open forwarder: what a restart behind a NAT or a proxy leaves), for 3 s, as in the
    issue. The liveness probe drops the silent connection within seconds, not the 20-40 s
    of pika's heartbeat check; the first confirm comes within 5 s of the broker being back;
    every confirmed message is in the queue, in order, and only the one in flight at the cut
    may be there twice (its confirm was swallowed; consumers are idempotent on it)."""

    async def body(ctx: Ctx) -> None:
        port = free_port()
        with half_open(port, AMQP_PORT, host=AMQP_HOST) as link:
            b = await ctx.broker(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F")
            assert isinstance(b, RabbitBroker)
            await b.declare_node_queue(ctx.node("a"))
            q = node_queue(ctx.node("a"))
            confirmed: list[bytes] = []
            stop = asyncio.Event()

            async def client() -> None:  # one in flight; a failed one is sent again, same id
                i = 0
                while not stop.is_set():
                    try:
                        await b.publish(q, f"m{i:05d}".encode())
                    except BrokerUnavailable:
                        await asyncio.sleep(0.02)
                        continue
                    confirmed.append(f"m{i:05d}".encode())
                    i += 1

            task = asyncio.create_task(client())
            await _until(lambda: len(confirmed) >= 20, 10, "no confirms before the cut")
            link.cut()
            at_cut = len(confirmed)
            await asyncio.sleep(3.0)
            link.restore()
            back = time.monotonic()
            await _until(lambda: len(confirmed) > at_cut, 8, "no confirm after the broker was back")
            first_ack_s = time.monotonic() - back
            await _until(lambda: len(confirmed) >= at_cut + 20, 5, "confirms stopped again")
            stop.set()
            await asyncio.wait_for(task, 15)
            assert first_ack_s < 5, f"first confirm {first_ack_s:.1f} s after the broker was back"
            assert b.probes_failed == 1, "the silent connection was not dropped by the probe"
            assert len(confirmed) - at_cut >= 20 and link.accepted == 2
            await b.close()
        stored = drain(AMQP_URL, q)
        assert list(dict.fromkeys(stored)) == confirmed  # none lost, in order
        doubled = [m for m in set(stored) if stored.count(m) > 1]
        assert doubled in ([], [confirmed[at_cut]]), doubled

    rabbit(body)


@pytest.mark.rabbitmq
def test_rabbit_confirms_settle_by_tag_multiple_and_nack() -> None:
    """The confirm bookkeeping on its own: ``multiple`` acks settle every tag up to theirs."""

    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        assert isinstance(b, RabbitBroker)
        session = b._session
        assert session is not None
        loop = asyncio.get_running_loop()
        futs = {tag: loop.create_future() for tag in range(1000, 1006)}
        for tag, fut in futs.items():
            session.pending[tag] = (fut, time.monotonic() + 60)

        def frame(method: Any) -> Any:
            return type("Frame", (), {"method": method})()

        b._on_confirm(session, frame(pika.spec.Basic.Ack(delivery_tag=1003, multiple=True)))
        assert [futs[t].done() for t in sorted(futs)] == [True] * 4 + [False] * 2
        b._on_confirm(session, frame(pika.spec.Basic.Nack(delivery_tag=1005, multiple=False)))
        assert futs[1005].done() and isinstance(futs[1005].exception(), BrokerUnavailable)
        assert not futs[1004].done()
        b._on_confirm(session, frame(pika.spec.Basic.Ack(delivery_tag=1004, multiple=False)))
        assert all(f.done() for f in futs.values())
        assert [f.exception() for t, f in sorted(futs.items()) if t < 1005] == [None] * 5
        assert 1000 not in session.pending and 1005 not in session.pending

    rabbit(body)


@pytest.mark.rabbitmq
def test_rabbit_unconfirmed_in_time_or_blocked_raises() -> None:
    async def body(ctx: Ctx) -> None:
        b = await ctx.broker()
        assert isinstance(b, RabbitBroker)
        session = b._session
        assert session is not None
        late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.pending[10_000] = (late, time.monotonic() - 1)  # its deadline has passed
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(late, 2)  # the sweep settles it
        session.blocked = True  # what connection.blocked (a resource alarm) does
        assert not b.ready
        with pytest.raises(BrokerUnavailable):
            await b.publish(ctx.inbound, b"blocked")
        session.blocked = False
        assert b.ready
        await b.publish(ctx.inbound, b"unblocked")

    rabbit(body)

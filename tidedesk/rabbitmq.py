"""The cluster implementation of the broker seam, on RabbitMQ through pika.

Adapter: pika's ``AsyncioConnection`` on the running event loop, not ``TornadoConnection``.
Tornado 6's IOLoop is a thin wrapper over the asyncio loop, so in a chat node both adapters end
up registering the same socket with the same loop; the asyncio one also serves router nodes
(which run no Tornado application), works under ``asyncio.run`` in tests and the benchmark, and
gives one code path to reason about instead of two.

Guarantees, as the seam's contract asks:

- ``publish`` uses publisher confirms and persistent messages (``delivery_mode=2``). Publishes
  are pipelined and batched (issue 17, ``tidedesk.broker_batches``): what one pass of the
  event loop publishes to one queue is written, when the pass ends, as one AMQP message (a
  lone envelope as itself, several as a broker batch of at most 64 / 128 KB), and each caller
  awaits its own future, resolved by the broker's ``basic.ack`` for that message's delivery
  tag (``multiple=True`` settles every tag up to it). A ``basic.nack``, a connection blocked
  by a resource alarm or no confirm within ``confirm_timeout_s`` raise
  :class:`BrokerUnavailable` in every caller of the batch; publish never returns for a message
  RabbitMQ has not taken responsibility for. ``batch=False`` (``TIDEDESK_ENVELOPE_FORMAT``
  ``binary-v2`` and older) writes every publish alone, at once, for consumers before batches.
- Topology is declared idempotently on every (re)connect: the durable inbound queue and every
  node queue declared so far. Node queues are durable (deliveries survive a broker restart)
  and carry ``x-expires``, so a dead node's queue disappears ``node_queue_ttl_ms`` after its
  last consumer went away.
- A connection that has received nothing for ``probe_quiet_s`` (1.5 s) is probed (a
  ``basic.qos`` on a channel of its own); no answer within ``probe_timeout_s`` (1.5 s) and the
  connection is dropped as half-open (issue 17), instead of waiting 20-40 s for the heartbeat.
- The connection is supervised: when it is lost, ``ready`` turns False and a background task
  reconnects (first retry after 25-50 ms, then doubling with jitter up to 1 s: a restarted
  broker is found within about a second), re-declares the topology and restarts every
  consumer. Publishes whose confirm the lost connection took are written again on the new one
  (issue 17; a batch whole) until ``confirm_timeout_s`` after their first write; a new
  ``publish`` while it is down raises at once.
- ``consume`` opens one channel per consumer with ``basic_qos(prefetch)``; a handler that
  returns gets its message acked, one that raises gets it nacked with ``requeue=True``
  (RabbitMQ then redelivers it with ``redelivered`` set). A broker batch is split and a
  handler started for each envelope, in order; it is acked once all returned and requeued
  whole if any raised (back at this consumer, only the envelopes that failed run again;
  prefetch counts AMQP messages, so up to 64 x prefetch envelopes).
  Decoding the envelopes is the handler's business.
  Messages whose handler was running when the connection dropped are redelivered as well.

Inbound queue type: ``classic`` (durable) by default. ``quorum`` is accepted too, but RabbitMQ
4.x gives quorum queues a default delivery limit of 20 and then drops the message; a router that
keeps failing during a database outage would lose messages, so set a ``delivery-limit`` policy
of -1 before choosing it. An existing queue must keep its type (RabbitMQ refuses a redeclare
with other arguments, and start-up logs that as an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika import spec
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel

from tidedesk import metrics
from tidedesk.broker import (
    INBOUND_QUEUE,
    AtOnce,
    Broker,
    BrokerUnavailable,
    Envelope,
    Handler,
    node_queue,
    observe_publish,
    queue_label,
)
from tidedesk.broker_batches import (
    BATCH_CONTENT_TYPE,
    BatchError,
    batch_takes,
    encode_batch,
    split_batch,
)
from tidedesk.confirms import ConfirmLost, PendingConfirms
from tidedesk.pika_writes import coalesce_writes

log = logging.getLogger(__name__)

# Heartbeat asked for unless the URL sets one: a silently dead TCP link is noticed within
# about two intervals (RabbitMQ's default, 60 s, would leave publishers hanging for minutes).
DEFAULT_HEARTBEAT_SECS = 15
# A failing handler's message goes back after this pause, so a broken router does not spin.
REQUEUE_DELAY_SECS = 0.05
# How often unconfirmed publishes are checked against confirm_timeout_s (and the connection's
# silence against PROBE_QUIET_SECS).
CONFIRM_SWEEP_SECS = 0.5
# Half-open connections (issue 17): a broker that went away without closing the TCP connection
# (restarted behind a NAT or a proxy, a host that froze, a cable pulled) leaves publishes waiting
# for confirms that never come, until pika's heartbeat check gives up on it: 20-40 s with the
# 15 s heartbeat (its check runs every heartbeat + 5 s). Instead, a connection that has
# received nothing for PROBE_QUIET_SECS is asked a question (basic.qos on a channel of its
# own, answered at once by a live broker, even one slow to confirm), and one that answers
# nothing within PROBE_TIMEOUT_SECS is dropped: the supervisor reconnects and unconfirmed
# publishes are written again. Detection within about 1.5 + 0.5 + 1.5 s (bench/p8, half-open
# case); a busy connection receives confirms and deliveries and is never probed; an idle one
# costs one small round trip every 1.5-2 s (between the broker's heartbeats).
PROBE_QUIET_SECS = 1.5
PROBE_TIMEOUT_SECS = 1.5
# A broker batch requeued because one of its envelopes failed: which of the others succeeded is
# remembered (by the batch's message id) for this many batches, so when it comes back to this
# consumer they are not handled again (a transfer done twice would answer its agent with an
# error the second time). Another consumer handles them again; handlers are idempotent.
REMEMBERED_PARTIAL_BATCHES = 1000

_PERSISTENT = pika.BasicProperties(delivery_mode=2)
_BATCH_BODIES = {q: metrics.BROKER_BATCH_BODIES.labels(queue=q) for q in ("inbound", "delivery")}


def _settle(fut: asyncio.Future[None], result: None) -> None:
    if not fut.done():
        fut.set_result(result)


async def _cancel(chan: _Chan, consumer_tag: str) -> None:
    await chan.call(lambda cb: chan.ch.basic_cancel(consumer_tag, cb))


class _Chan:
    """A pika channel whose callback-style calls can be awaited; they fail when it closes."""

    def __init__(self, ch: Channel) -> None:
        self.ch = ch
        self.closed: BaseException | None = None
        self._ops: set[asyncio.Future[Any]] = set()
        ch.add_on_close_callback(self._on_close)

    def _on_close(self, _ch: Channel, exc: BaseException) -> None:
        self.closed = exc
        for fut in self._ops:
            if not fut.done():
                fut.set_exception(BrokerUnavailable(f"RabbitMQ channel closed: {exc}"))

    async def call(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """Run ``start(callback)`` and wait for the callback's frame."""
        if self.closed is not None or not self.ch.is_open:
            raise BrokerUnavailable(f"RabbitMQ channel closed: {self.closed}")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(frame: Any) -> None:
            if not fut.done():
                fut.set_result(frame)

        self._ops.add(fut)
        try:
            try:
                start(done)
            except pika.exceptions.AMQPError as exc:
                raise BrokerUnavailable(f"RabbitMQ call failed: {exc!r}") from exc
            return await fut
        finally:
            self._ops.discard(fut)

    def close(self) -> None:
        if self.ch.is_open:
            self.ch.close()


class _Batch:
    """The envelopes published to one queue in one pass of the event loop, sent as one AMQP
    message (one envelope: as itself) under one confirm; each caller awaits its own future.

    It is the :class:`~tidedesk.confirms.Waiter` of its confirm: an ack resolves every caller,
    a nack or a passed deadline fails them all, and a lost connection (:class:`ConfirmLost`)
    hands it to ``on_lost``, which writes it again on the next connection (or fails it)."""

    __slots__ = ("bodies", "deadline", "id", "on_lost", "queue", "session", "size", "waiters")

    def __init__(self, queue: str, deadline: float,
                 on_lost: Callable[[_Batch, BaseException], None]) -> None:
        self.queue = queue
        self.bodies: list[bytes] = []
        self.size = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.deadline = deadline
        self.session: _Session | None = None  # where it was last written
        self.id = ""  # its message id, given on the first write (a rewrite keeps it)
        self.on_lost = on_lost

    def add(self, body: bytes, waiter: asyncio.Future[None]) -> None:
        self.bodies.append(body)
        self.size += len(body)
        self.waiters.append(waiter)

    def message(self, message_id: str) -> tuple[bytes, pika.BasicProperties]:
        if len(self.bodies) == 1:  # byte for byte what nodes before batches wrote
            return self.bodies[0], _PERSISTENT
        return encode_batch(self.bodies), pika.BasicProperties(
            delivery_mode=2, content_type=BATCH_CONTENT_TYPE, message_id=message_id)

    # -- Waiter ------------------------------------------------------------------------------
    def done(self) -> bool:
        """True when no caller waits any more (all settled, or all gave up)."""
        return all(w.done() for w in self.waiters)

    def set_result(self, _result: None, /) -> None:
        for w in self.waiters:
            if not w.done():
                w.set_result(None)

    def set_exception(self, exc: BaseException, /) -> None:
        if isinstance(exc, ConfirmLost):
            self.on_lost(self, exc)
        else:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        one = len(self.waiters) == 1
        for w in self.waiters:
            if not w.done():  # (one exception object raised in many tasks grows tracebacks)
                w.set_exception(exc if one else BrokerUnavailable(str(exc)))


class _BatchJoin:
    """Settles a broker batch once the handlers of all its envelopes are done: acked if every
    one returned, requeued whole if any failed (the broker remembers which succeeded, see
    REMEMBERED_PARTIAL_BATCHES), left unsettled if a handler was stopped (RabbitMQ redelivers
    it)."""

    __slots__ = ("broker", "chan", "done", "left", "message_id", "ok", "stopped", "sub", "tag")

    def __init__(self, broker: RabbitBroker, sub: _Subscription, chan: _Chan, tag: int,
                 message_id: str | None, done: frozenset[int], count: int) -> None:
        self.broker, self.sub, self.chan, self.tag = broker, sub, chan, tag
        self.message_id, self.done = message_id, set(done)
        self.left, self.ok, self.stopped = count, True, False

    def one_done(self, index: int, task: asyncio.Task[bool]) -> None:
        if task.cancelled():
            self.stopped = True
        elif task.exception() is not None or not task.result():
            self.ok = False
        else:
            self.done.add(index)
        self.left -= 1
        if self.left == 0 and not self.stopped:
            self.settle()

    def settle(self) -> None:
        self.broker._settle_batch(self.sub, self.chan, self.tag, self.message_id, self.ok,
                                  frozenset(self.done))


@dataclass
class _Session:
    """One connection's worth of state; replaced wholesale on reconnect."""

    conn: AsyncioConnection
    lost: asyncio.Future[BaseException]
    pub: _Chan | None = None
    pending: PendingConfirms = field(default_factory=PendingConfirms)
    blocked: bool = False
    # The liveness probe: its own channel, the bytes received when last looked at and since
    # when that count has not moved (monotonic), the probe running now.
    probe_chan: _Chan | None = None
    seen_bytes: int = -1
    quiet_since: float = 0.0
    probe: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Subscription:
    queue: str
    handler: Handler
    prefetch: int
    session: _Session | None = None
    chan: _Chan | None = None
    tag: str | None = None


class RabbitBroker(Broker):
    """:class:`~tidedesk.broker.Broker` on RabbitMQ (``amqp://`` or ``amqps://`` URL).

    ``start`` launches the connection supervisor and returns after the first attempt, connected
    or not (``ready`` tells which; it keeps retrying). ``consume`` and ``declare_node_queue``
    called while disconnected are remembered and carried out as soon as the connection opens.
    """

    def __init__(self, url: str, *, node_queue_ttl_ms: int = 60000,
                 inbound_queue: str = INBOUND_QUEUE, inbound_queue_type: str = "classic",
                 confirm_timeout_s: float = 10.0, reconnect_min_s: float = 0.05,
                 reconnect_max_s: float = 1.0, coalesce: bool = True,
                 probe_quiet_s: float | None = PROBE_QUIET_SECS,
                 probe_timeout_s: float = PROBE_TIMEOUT_SECS, batch: bool = True) -> None:
        if inbound_queue_type not in ("classic", "quorum"):
            raise ValueError(f"inbound_queue_type must be classic or quorum, "
                             f"got {inbound_queue_type!r}")
        self._params = pika.URLParameters(url)
        if "heartbeat=" not in url:
            self._params.heartbeat = DEFAULT_HEARTBEAT_SECS
        self._node_queue_ttl_ms = node_queue_ttl_ms
        self._inbound_queue = inbound_queue
        self._inbound_queue_type = inbound_queue_type
        self._confirm_timeout_s = confirm_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._coalesce = coalesce
        # None: no probe, a dead connection is found by the heartbeat alone (the old way)
        self._probe_quiet_s = probe_quiet_s
        self._probe_timeout_s = probe_timeout_s
        # False: every publish is its own AMQP message, for consumers of a version before
        # broker batches (TIDEDESK_ENVELOPE_FORMAT other than binary; docs/envelopes.md).
        self._batch = batch
        # queue -> the batch gathering this pass's publishes to it; sent by _flush.
        self._open: dict[str, _Batch] = {}
        self._flush_due = False
        self._rewrites: set[asyncio.Task[None]] = set()
        # Batch message ids: unique to this broker object, then a count.
        self._id_prefix = f"{os.urandom(6).hex()}-"
        self._batch_ids = 0
        # message id -> the envelopes of a requeued batch that succeeded here (see
        # REMEMBERED_PARTIAL_BATCHES), oldest first.
        self._partly_done: OrderedDict[str, frozenset[int]] = OrderedDict()
        # Connections dropped because they answered no probe (tests, metrics).
        self.probes_failed = 0
        self._session: _Session | None = None
        self._ready = False
        self._closing = False
        self._node_queues: set[str] = set()
        self._subs: list[_Subscription] = []
        self._running: set[asyncio.Task[None]] = set()
        self._setup_lock = asyncio.Lock()
        # Set while connected and set up: publishes whose confirm was lost wait for it.
        self._up = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._closing = False
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first), name="rabbitmq-supervisor")
        self._sweeper = asyncio.create_task(self._sweep_confirms(), name="rabbitmq-confirms")
        await first

    async def close(self) -> None:
        self._closing = True
        await self.stop_consuming()
        self._ready = False
        session = self._session
        if session is not None:
            session.pending.fail_all("broker closed")
            if session.conn.is_open:
                session.conn.close()
            if not session.lost.done():
                try:
                    await asyncio.wait_for(asyncio.shield(session.lost), 5)
                except TimeoutError:
                    log.warning("RabbitMQ connection did not close in time")
        for task in (self._supervisor, self._sweeper, *self._rewrites):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._supervisor = self._sweeper = None
        self._session = None

    @property
    def ready(self) -> bool:
        s = self._session
        return self._ready and s is not None and not s.blocked

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        delay = self._reconnect_min_s
        while not self._closing:
            session: _Session | None = None
            try:
                session = await self._connect()
                async with self._setup_lock:
                    await self._declare_topology(session)
                    for sub in list(self._subs):
                        await self._start_subscription(session, sub)
                    self._ready = True
                    self._up.set()
            except Exception as exc:  # whatever went wrong, the answer is: retry later
                self._ready = False
                self._up.clear()
                log.warning("RabbitMQ connection failed: %s; retrying in %.1f s", exc, delay,
                            extra={"retry_in_s": delay})
                if session is not None and session.conn.is_open:
                    session.conn.close()
                if not first.done():
                    first.set_result(None)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._reconnect_max_s)
                continue
            log.info("RabbitMQ connected")
            delay = self._reconnect_min_s
            if not first.done():
                first.set_result(None)
            why = await session.lost
            self._ready = False
            self._up.clear()
            if not self._closing:
                log.warning("RabbitMQ connection lost: %s; reconnecting", why)

    async def _connect(self) -> _Session:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        lost: asyncio.Future[BaseException] = loop.create_future()
        holder: list[_Session] = []

        def on_open(conn: Any) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(BrokerUnavailable(f"cannot connect to RabbitMQ: {exc!r}"))

        def on_close(_conn: Any, exc: BaseException) -> None:
            if holder:
                holder[0].pending.fail_all(f"RabbitMQ connection lost before the confirm: {exc!r}")
            if not lost.done():
                lost.set_result(exc)

        conn = AsyncioConnection(self._params, on_open_callback=on_open,
                                 on_open_error_callback=on_open_error,
                                 on_close_callback=on_close, custom_ioloop=loop)
        try:
            await opened
        except asyncio.CancelledError:  # close() during the handshake: do not leave it running
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()
            raise
        if self._coalesce:
            coalesce_writes(conn)
        session = _Session(conn=conn, lost=lost)
        holder.append(session)
        self._session = session

        def on_blocked(_conn: Any, _frame: Any) -> None:
            log.warning("RabbitMQ blocks publishers (resource alarm)")
            session.blocked = True

        def on_unblocked(_conn: Any, _frame: Any) -> None:
            log.info("RabbitMQ unblocked publishers")
            session.blocked = False

        conn.add_on_connection_blocked_callback(on_blocked)
        conn.add_on_connection_unblocked_callback(on_unblocked)
        pub = await self._open_channel(session)
        await pub.call(lambda cb: pub.ch.confirm_delivery(
            lambda frame: self._on_confirm(session, frame), callback=cb))

        def on_pub_closed(_ch: Channel, exc: BaseException) -> None:
            # Without its confirm channel the connection is useless: start over.
            session.pending.fail_all(f"RabbitMQ channel closed before the confirm: {exc!r}")
            if session.conn.is_open and not self._closing:
                session.conn.close()

        pub.ch.add_on_close_callback(on_pub_closed)
        session.pub = pub
        if self._probe_quiet_s is not None:
            session.probe_chan = await self._open_channel(session)
        return session

    async def _open_channel(self, session: _Session) -> _Chan:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        try:
            ch = session.conn.channel(on_open_callback=lambda _ch: _settle(opened, None))
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot open a RabbitMQ channel: {exc!r}") from exc
        chan = _Chan(ch)

        def on_close(_ch: Channel, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(BrokerUnavailable(f"RabbitMQ channel closed: {exc!r}"))

        ch.add_on_close_callback(on_close)
        await opened
        return chan

    async def _declare_topology(self, session: _Session) -> None:
        assert session.pub is not None
        pub = session.pub
        await pub.call(lambda cb: pub.ch.queue_declare(
            self._inbound_queue, durable=True,
            arguments={"x-queue-type": self._inbound_queue_type}, callback=cb))
        for name in sorted(self._node_queues):
            await self._declare_node_queue(session, name)

    async def _declare_node_queue(self, session: _Session, name: str) -> None:
        assert session.pub is not None
        pub = session.pub
        await pub.call(lambda cb: pub.ch.queue_declare(
            name, durable=True,
            arguments={"x-queue-type": "classic", "x-expires": self._node_queue_ttl_ms},
            callback=cb))

    async def declare_node_queue(self, node_id: str) -> None:
        name = node_queue(node_id)
        self._node_queues.add(name)
        async with self._setup_lock:
            session = self._session
            if self._ready and session is not None:
                await self._declare_node_queue(session, name)

    # -- publishing -----------------------------------------------------------------------------
    async def publish(self, queue: str, body: bytes) -> None:
        started = time.perf_counter()
        try:
            await self._publish(queue, body)
        except BrokerUnavailable:
            observe_publish(queue, None)
            raise
        observe_publish(queue, started)

    async def _publish(self, queue: str, body: bytes) -> None:
        """Add ``body`` to this pass's batch for ``queue`` and wait for the batch's confirm.

        The batch is written at the end of the event loop's pass (:meth:`_flush`), or at once
        when it is full. If the connection goes before the confirm, it is written again on the
        next connection (within ``confirm_timeout_s`` of the first publish in it), so a broker
        restart costs the sender a wait instead of a ``try_again``. A publish may thus reach
        the queue twice: consumers are idempotent (client ids, seqs, state checks)."""
        session = self._session
        if not self._ready or session is None or session.pub is None:
            raise BrokerUnavailable("RabbitMQ is not connected; retry later")
        if session.blocked:
            raise BrokerUnavailable("RabbitMQ is blocking publishers (resource alarm); retry")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._batch:
            batch = self._new_batch(queue)
            batch.add(body, waiter)
            self._send(batch)
        else:
            batch_or_none = self._open.get(queue)
            if batch_or_none is None or not batch_takes(len(batch_or_none.bodies),
                                                        batch_or_none.size, len(body)):
                if batch_or_none is not None:
                    self._send(batch_or_none)  # full: out now, in order before this one
                batch = self._open[queue] = self._new_batch(queue)
                if not self._flush_due:
                    self._flush_due = True
                    loop.call_soon(self._flush)
            else:
                batch = batch_or_none
            batch.add(body, waiter)
        await waiter

    def _new_batch(self, queue: str) -> _Batch:
        return _Batch(queue, time.monotonic() + self._confirm_timeout_s, self._on_lost)

    def _flush(self) -> None:
        """Send every batch gathered in this pass of the event loop."""
        self._flush_due = False
        batches, self._open = self._open, {}
        for batch in batches.values():
            self._send(batch)

    def _send(self, batch: _Batch) -> None:
        """Write ``batch`` on the current connection, or fail its callers."""
        if self._open.get(batch.queue) is batch:
            del self._open[batch.queue]
        session = self._session
        try:
            if not self._ready or session is None or session.pub is None:
                raise BrokerUnavailable("RabbitMQ is not connected; retry later")
            self._write(session, batch)
        except BrokerUnavailable as exc:
            batch.fail(exc)

    def _write(self, session: _Session, batch: _Batch) -> None:
        if session.blocked:
            raise BrokerUnavailable("RabbitMQ is blocking publishers (resource alarm); retry")
        assert session.pub is not None
        if not batch.id:
            self._batch_ids += 1
            batch.id = f"{self._id_prefix}{self._batch_ids}"
        body, props = batch.message(batch.id)
        try:
            session.pub.ch.basic_publish("", batch.queue, body, props)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"RabbitMQ publish failed: {exc!r}") from exc
        batch.session = session
        session.pending.expect_for(batch, batch.deadline)
        _BATCH_BODIES[queue_label(batch.queue)].observe(len(batch.bodies))

    def _on_lost(self, batch: _Batch, exc: BaseException) -> None:
        """The connection went before ``batch``'s confirm: write it again on the next one."""
        if self._closing or batch.session is None:
            batch.fail(exc)
            return
        task = asyncio.get_running_loop().create_task(self._rewrite(batch, batch.session))
        self._rewrites.add(task)
        task.add_done_callback(self._rewrites.discard)

    async def _rewrite(self, batch: _Batch, lost: _Session) -> None:
        try:
            session = await self._next_session(lost, batch.deadline)
            if batch.done():
                return  # every caller gave up meanwhile
            self._write(session, batch)
        except BrokerUnavailable as exc:
            batch.fail(exc)
        except asyncio.CancelledError:
            batch.fail(BrokerUnavailable("broker closed"))
            raise

    async def _next_session(self, lost: _Session, deadline: float) -> _Session:
        """The connection after ``lost``, once it is set up; BrokerUnavailable at ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable("RabbitMQ did not come back in time; retry")
            try:
                await asyncio.wait_for(self._up.wait(), remaining)
            except TimeoutError:
                raise BrokerUnavailable("RabbitMQ did not come back in time; retry") from None
            session = self._session
            if (self._ready and session is not None and session is not lost
                    and session.pub is not None):
                return session
            await asyncio.sleep(0.01)  # the old session's end was not seen yet

    def _on_confirm(self, session: _Session, frame: Any) -> None:
        method = frame.method
        session.pending.settle(method.delivery_tag, multiple=bool(method.multiple),
                               nack=isinstance(method, spec.Basic.Nack))

    async def _sweep_confirms(self) -> None:
        while True:
            await asyncio.sleep(CONFIRM_SWEEP_SECS)
            session = self._session
            if session is not None:
                now = time.monotonic()
                session.pending.expire(now)
                self._watch(session, now)

    def _watch(self, session: _Session, now: float) -> None:
        """Start a probe when the connection has been silent for ``probe_quiet_s``."""
        received = session.conn.bytes_received
        if received != session.seen_bytes:
            session.seen_bytes, session.quiet_since = received, now
            return
        # (a blocked connection is silent on purpose: RabbitMQ stops reading it in an alarm)
        if (self._probe_quiet_s is None or session.probe is not None or not self._ready
                or session.blocked or session is not self._session or not session.conn.is_open
                or now - session.quiet_since < self._probe_quiet_s):
            return
        session.probe = asyncio.create_task(self._probe(session), name="rabbitmq-probe")

    async def _probe(self, session: _Session) -> None:
        chan = session.probe_chan
        before = session.conn.bytes_received
        try:
            if chan is None:
                return
            await asyncio.wait_for(chan.call(lambda cb: chan.ch.basic_qos(
                prefetch_count=0, callback=cb)), self._probe_timeout_s)
        except TimeoutError:
            # Anything received meanwhile (a slow loop read the answer late) means alive.
            if session.conn.bytes_received == before and session.conn.is_open:
                self.probes_failed += 1
                log.warning("RabbitMQ answered nothing for %.1f s (a half-open connection?); "
                            "dropping it to reconnect",
                            time.monotonic() - session.quiet_since,
                            extra={"unconfirmed": len(session.pending)})
                # What pika's own heartbeat check does, sooner: close the socket without the
                # AMQP close handshake (nobody would answer it); on_close then fails the
                # pending confirms (they are written again) and the supervisor reconnects.
                session.conn._terminate_stream(  # (pika has no public abort)
                    pika.exceptions.AMQPHeartbeatTimeout("no answer to a liveness probe"))
        except BrokerUnavailable:
            pass  # the channel or connection closed: its own callbacks take it from here
        finally:
            session.probe = None

    # -- consuming ------------------------------------------------------------------------------
    async def consume(self, queue: str, handler: Handler, prefetch: int = 100) -> None:
        sub = _Subscription(queue, handler, max(1, prefetch))
        self._subs.append(sub)
        async with self._setup_lock:
            session = self._session
            if self._ready and session is not None and sub.session is not session:
                try:
                    await self._start_subscription(session, sub)
                except BrokerUnavailable:
                    self._subs.remove(sub)
                    raise

    async def _start_subscription(self, session: _Session, sub: _Subscription) -> None:
        chan = await self._open_channel(session)
        await chan.call(lambda cb: chan.ch.basic_qos(prefetch_count=sub.prefetch, callback=cb))

        at_once = sub.handler.fn if isinstance(sub.handler, AtOnce) else None

        def on_message(_ch: Channel, method: Any, props: Any, body: bytes) -> None:
            tag, redelivered = method.delivery_tag, bool(method.redelivered)
            if props.content_type != BATCH_CONTENT_TYPE:
                if at_once is not None:
                    self._run_at_once(sub, chan, tag, None, redelivered, [body], frozenset(),
                                      at_once)
                    return
                self._spawn(self._handle(sub, chan, tag, Envelope(body, redelivered)))
                return
            try:
                bodies = split_batch(body)
            except BatchError as exc:  # it would fail the same way forever: drop it
                metrics.ENVELOPES_REJECTED.labels(queue=queue_label(sub.queue)).inc()
                log.error("dropping an undecodable broker batch",
                          extra={"queue": sub.queue, "error": str(exc), "body": body[:200]})
                self._settle(sub, chan, tag, True)
                return
            # One task per envelope, made here in the batch's order, as for envelopes that came
            # alone: handlers are started in queue order (the router's per-conversation
            # sections rely on it); the message is settled when the last one is done.
            mid = props.message_id
            done = self._partly_done.pop(mid, frozenset()) if redelivered and mid else frozenset()
            if at_once is not None:
                self._run_at_once(sub, chan, tag, mid, redelivered, bodies, done, at_once)
                return
            todo = [(i, one) for i, one in enumerate(bodies) if i not in done]
            join = _BatchJoin(self, sub, chan, tag, mid, done, len(todo))
            if not todo:
                join.settle()
            for i, one in todo:
                self._spawn(self._run(sub, Envelope(one, redelivered))).add_done_callback(
                    functools.partial(join.one_done, i))

        def on_cancelled(_frame: Any) -> None:
            if sub in self._subs:
                log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?)", sub.queue)

        chan.ch.add_on_cancel_callback(on_cancelled)
        tag_holder: list[str] = []
        await chan.call(lambda cb: tag_holder.append(chan.ch.basic_consume(
            sub.queue, on_message, auto_ack=False, callback=cb)))
        sub.session, sub.chan, sub.tag = session, chan, tag_holder[0]

    def _run_at_once(self, sub: _Subscription, chan: _Chan, tag: int, mid: str | None,
                     redelivered: bool, bodies: list[bytes], done: frozenset[int],
                     fn: Callable[[Envelope], None]) -> None:
        """An :class:`~tidedesk.broker.AtOnce` handler on each envelope not ``done`` yet, in
        order, then the message settled as :class:`_BatchJoin` would: acked if every one
        returned, else requeued whole after the requeue pause (the ones that returned are
        remembered, and skipped when it comes back)."""
        ok, finished = True, set(done)
        for i, one in enumerate(bodies):
            if i in done:
                continue
            try:
                fn(Envelope(one, redelivered))
            except Exception:
                log.exception("handler failed; message requeued", extra={"queue": sub.queue})
                ok = False
            else:
                finished.add(i)
        if ok:
            self._settle(sub, chan, tag, True)
        else:
            asyncio.get_running_loop().call_later(REQUEUE_DELAY_SECS, self._settle_batch, sub,
                                                  chan, tag, mid, False, frozenset(finished))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _handle(self, sub: _Subscription, chan: _Chan, tag: int, env: Envelope) -> None:
        self._settle(sub, chan, tag, await self._run(sub, env))

    async def _run(self, sub: _Subscription, env: Envelope) -> bool:
        """Run the handler on one envelope: True if it returned, False if it failed (after
        the requeue pause); CancelledError when its consumer is being stopped."""
        try:
            await sub.handler(env)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # shutting down: the message stays unacked and RabbitMQ redelivers it
            # Something the handler awaited was cancelled, not this task: a failure like any
            # other (left unsettled, the message would hold a prefetch slot until reconnect).
            log.warning("handler's call was cancelled; message requeued",
                        extra={"queue": sub.queue})
            await asyncio.sleep(REQUEUE_DELAY_SECS)
            return False
        except Exception:
            log.exception("handler failed; message requeued", extra={"queue": sub.queue})
            await asyncio.sleep(REQUEUE_DELAY_SECS)
            return False
        return True

    def _remember_partly_done(self, message_id: str, done: frozenset[int]) -> None:
        if done:
            self._partly_done[message_id] = done
            while len(self._partly_done) > REMEMBERED_PARTIAL_BATCHES:
                self._partly_done.popitem(last=False)

    def _settle_batch(self, sub: _Subscription, chan: _Chan, tag: int, message_id: str | None,
                      ok: bool, done: frozenset[int]) -> None:
        """Ack a batch, or requeue it remembering which of its envelopes are ``done``."""
        if not ok and message_id:
            self._remember_partly_done(message_id, done)
        self._settle(sub, chan, tag, ok)

    def _settle(self, sub: _Subscription, chan: _Chan, tag: int, ok: bool) -> None:
        """Ack (``ok``) or requeue one AMQP message."""
        if chan.closed is not None or not chan.ch.is_open:
            return  # the connection went; RabbitMQ redelivers the message
        try:
            if ok:
                chan.ch.basic_ack(tag)
            else:
                chan.ch.basic_nack(tag, requeue=True)
        except pika.exceptions.AMQPError as exc:
            log.warning("could not settle a message on %s: %r", sub.queue, exc)

    async def stop_consuming(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            chan, tag = sub.chan, sub.tag
            if chan is not None and tag is not None and chan.ch.is_open:
                try:
                    await asyncio.wait_for(_cancel(chan, tag), 5)
                except (BrokerUnavailable, TimeoutError) as exc:
                    log.warning("could not cancel the consumer of %s: %r", sub.queue, exc)
        # Handlers already running finish and settle their messages on their channels.
        await asyncio.gather(*self._running, return_exceptions=True)
        for sub in subs:
            if sub.chan is not None:
                sub.chan.close()

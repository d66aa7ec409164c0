"""The broker seam: publish with confirmation, consume with acknowledgement.

Two implementations pass the same contract tests (``tests/test_broker_contract.py``):
:class:`MemoryBroker` here (embedded mode) and the RabbitMQ one in ``tidedesk.rabbitmq``.

Queues:
- ``INBOUND_QUEUE``: everything chat nodes hand to routers (messages and chat events).
- ``node_queue(node_id)``: deliveries for the clients connected to one chat node.

Contract:
- ``await publish(queue, body)`` returns only once the message is safe: for RabbitMQ when the
  broker confirmed a persistent message; for the memory broker on an ``inbound`` queue when a
  consumer has acknowledged it (in one process that is the only durable point: the router has
  committed the row). It raises :class:`BrokerUnavailable` instead of ever returning falsely.
- ``consume(queue, handler, prefetch)``: up to ``prefetch`` handlers run at once; a handler that
  returns acknowledges its message, one that raises has it requeued (redelivered later).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tidedesk import metrics
from tidedesk.errors import Unavailable

log = logging.getLogger(__name__)

INBOUND_QUEUE = "tidedesk.inbound"
NODE_QUEUE_PREFIX = "tidedesk.node."


def node_queue(node_id: str) -> str:
    return NODE_QUEUE_PREFIX + node_id


def queue_label(queue: str) -> str:
    """The metrics label of a queue: ``delivery`` (a node queue) or ``inbound``."""
    return "delivery" if queue.startswith(NODE_QUEUE_PREFIX) else "inbound"


# Labelled children made once: labels() takes a lock and a dict lookup on every call.
_CONFIRM_LATENCY = {q: metrics.PUBLISH_CONFIRM_LATENCY.labels(queue=q)
                    for q in ("inbound", "delivery")}
_PUBLISH_FAILURES = {q: metrics.PUBLISH_FAILURES.labels(queue=q) for q in ("inbound", "delivery")}


def observe_publish(queue: str, started: float | None) -> None:
    """Record one publish: confirmed after ``time.perf_counter() - started``, or failed
    (``started`` None)."""
    label = queue_label(queue)
    if started is None:
        _PUBLISH_FAILURES[label].inc()
    else:
        _CONFIRM_LATENCY[label].observe(time.perf_counter() - started)


class BrokerUnavailable(Unavailable):
    """The message could not be confirmed; the sender must retry (never treat as sent)."""


@dataclass
class Envelope:
    body: bytes
    redelivered: bool = False


Handler = Callable[[Envelope], Awaitable[None]]


class AtOnce:
    """A handler that never waits (a chat node's deliveries: frames handed to its sockets).
    The RabbitMQ broker calls ``fn`` for each envelope in its delivery callback, in order,
    instead of starting a task per envelope (a task, its callbacks and the batch's join cost
    3.4 us of CPU an envelope, issue 17); to every other broker it is an ordinary handler."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Envelope], None]) -> None:
        self.fn = fn

    async def __call__(self, envelope: Envelope) -> None:
        self.fn(envelope)


class Broker(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True while publishing can succeed (``/readyz`` reports this)."""

    @abc.abstractmethod
    async def declare_node_queue(self, node_id: str) -> None:
        """Create this node's delivery queue (idempotent; it expires when the node is gone)."""

    @abc.abstractmethod
    async def publish(self, queue: str, body: bytes) -> None: ...

    @abc.abstractmethod
    async def consume(self, queue: str, handler: Handler, prefetch: int = 100) -> None:
        """Start consuming ``queue`` in the background; returns once the consumer is set up."""

    @abc.abstractmethod
    async def stop_consuming(self) -> None:
        """Stop taking new messages; handlers already running finish and acknowledge."""


@dataclass
class _Item:
    body: bytes
    confirmed: asyncio.Future[None] | None
    redelivered: bool = False


@dataclass
class _Queue:
    items: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)
    busy: set[asyncio.Task[None]] = field(default_factory=set)  # consumers inside a handler


class MemoryBroker(Broker):
    """In-process broker for embedded mode and tests.

    ``confirm_on_ack`` names the queues whose publish waits for the consumer's acknowledgement
    (see the module docstring); by default the inbound queue.
    """

    def __init__(self, confirm_on_ack: tuple[str, ...] = (INBOUND_QUEUE,),
                 confirm_timeout_s: float = 10.0) -> None:
        self._queues: dict[str, _Queue] = {}
        self._confirm_on_ack = set(confirm_on_ack)
        self._confirm_timeout_s = confirm_timeout_s
        self._running = False
        self._inflight: set[asyncio.Task[None]] = set()

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        await self.stop_consuming()
        self._running = False
        for q in self._queues.values():
            while not q.items.empty():
                item = q.items.get_nowait()
                if item.confirmed is not None and not item.confirmed.done():
                    item.confirmed.set_exception(BrokerUnavailable("broker closed"))

    @property
    def ready(self) -> bool:
        return self._running

    async def declare_node_queue(self, node_id: str) -> None:
        self._queue(node_queue(node_id))

    async def publish(self, queue: str, body: bytes) -> None:
        if not self._running:
            observe_publish(queue, None)
            raise BrokerUnavailable("the in-process broker is not running")
        started = time.perf_counter()
        confirmed: asyncio.Future[None] | None = None
        if queue in self._confirm_on_ack:
            confirmed = asyncio.get_running_loop().create_future()
        self._queue(queue).items.put_nowait(_Item(body, confirmed))
        if confirmed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), self._confirm_timeout_s)
            except TimeoutError:
                observe_publish(queue, None)
                # Still queued, so it will be stored; but we cannot say so yet.
                raise BrokerUnavailable("not confirmed in time; retry with the same id") from None
        observe_publish(queue, started)

    async def consume(self, queue: str, handler: Handler, prefetch: int = 100) -> None:
        q = self._queue(queue)
        for _ in range(max(1, prefetch)):
            q.consumers.append(asyncio.create_task(self._consume_loop(q, handler)))

    async def _consume_loop(self, q: _Queue, handler: Handler) -> None:
        me = asyncio.current_task()
        assert me is not None
        while me in q.consumers:  # stop_consuming removes us; a running handler finishes first
            item = await q.items.get()
            q.busy.add(me)
            try:
                await handler(Envelope(item.body, item.redelivered))
            except asyncio.CancelledError:
                item.redelivered = True
                q.items.put_nowait(item)
                if me.cancelling():
                    raise  # this consumer is being stopped
                # Something the handler awaited was cancelled, not this consumer: a failure.
                log.warning("handler's call was cancelled; message requeued")
                await asyncio.sleep(0.05)
                continue
            except Exception:
                log.exception("handler failed; message requeued")
                item.redelivered = True
                await asyncio.sleep(0.05)  # a failing handler must not spin the loop
                q.items.put_nowait(item)
                continue
            finally:
                q.busy.discard(me)
            if item.confirmed is not None and not item.confirmed.done():
                item.confirmed.set_result(None)

    async def stop_consuming(self) -> None:
        tasks = [t for q in self._queues.values() for t in q.consumers]
        busy = {t for q in self._queues.values() for t in q.busy}
        for q in self._queues.values():
            q.consumers.clear()
        for t in tasks:
            if t not in busy:  # idle consumers stop now; busy ones after their handler
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

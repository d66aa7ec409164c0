"""The cluster's webhook outbox queues on RabbitMQ: a work queue and retry queues whose
messages come back to it by dead-lettering when their per-message TTL runs out.

Topology (all durable, messages persistent):

- ``tidedesk.webhooks``: delivery ids due now; dispatchers (routers) consume it.
- ``tidedesk.webhooks.retry.<n>s`` for each delay of :data:`tidedesk.events.RETRY_DELAYS_SECS`:
  no consumer; each message carries ``expiration`` = n s and the queue dead-letters expired
  messages to the work queue. One queue per delay keeps every message in a queue at the same
  TTL, so a message never waits behind a longer-lived one (RabbitMQ expires from the head).
  No delayed-message plugin is needed.

The delivery row in the database (``tidedesk/storage/webhooks.py``) stays the log and the
source of truth: a message names only a delivery id, and a dispatcher claims the row before it
sends, so a duplicate message sends nothing twice.

This uses its own connection on its own thread (pika's BlockingConnection): webhook traffic
never shares a channel, a flow-control stall or a confirm window with chat messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from tidedesk.broker import BrokerUnavailable
from tidedesk.events import RETRY_DELAYS_SECS

log = logging.getLogger(__name__)

WORK_QUEUE = "tidedesk.webhooks"
# How long the worker thread waits for RabbitMQ between looks at its command queue.
IO_SLICE_SECS = 0.05
RECONNECT_SECS = 1.0
PUBLISH_TIMEOUT_SECS = 10.0
_PERSISTENT = 2


def retry_queue(delay_s: int) -> str:
    return f"{WORK_QUEUE}.retry.{delay_s}s"


# (connection generation, delivery tag): an ack for a message of a closed connection is void.
Tag = tuple[int, int]
OnDelivery = Callable[[str, Tag], None]


class RabbitWebhookQueues:
    def __init__(self, url: str, *, prefetch: int = 100) -> None:
        self.url = url
        self.prefetch = prefetch
        self._commands: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_delivery: OnDelivery | None = None
        self._generation = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self, on_delivery: OnDelivery | None = None) -> None:
        """Connect and declare; with ``on_delivery``, also consume the work queue (it is
        called on the event loop with each delivery id and its tag, to :meth:`ack`)."""
        self._loop = asyncio.get_running_loop()
        self._on_delivery = on_delivery
        self._thread = threading.Thread(target=self._run, name="webhook-queues", daemon=True)
        self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait, 10.0)

    async def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)

    async def publish(self, delivery_id: str, delay_s: int = 0) -> None:
        """Queue a delivery id now (``delay_s`` 0) or after one of the retry delays; returns
        once RabbitMQ confirmed it, else raises :class:`BrokerUnavailable`."""
        assert delay_s == 0 or delay_s in RETRY_DELAYS_SECS, delay_s
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._commands.put(("publish", delivery_id, delay_s, done))
        try:
            await asyncio.wait_for(done, PUBLISH_TIMEOUT_SECS)
        except TimeoutError:
            raise BrokerUnavailable("the webhook queue did not confirm in time") from None

    def ack(self, tag: Tag) -> None:
        self._commands.put(("ack", tag))

    # -- the worker thread (owns the connection) ----------------------------------------------
    def _settle(self, fut: asyncio.Future[None], error: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        assert self._loop is not None
        self._loop.call_soon_threadsafe(settle)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._session()
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.warning("webhook queues: RabbitMQ connection lost; reconnecting",
                            extra={"error": repr(exc)})
            self._ready.clear()
            self._stopping.wait(RECONNECT_SECS)

    def _session(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self._generation += 1
        generation = self._generation
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(WORK_QUEUE, durable=True)
            for delay in sorted(set(RETRY_DELAYS_SECS)):
                ch.queue_declare(retry_queue(delay), durable=True, arguments={
                    "x-dead-letter-exchange": "", "x-dead-letter-routing-key": WORK_QUEUE})
            if self._on_delivery is not None:
                ch.basic_qos(prefetch_count=self.prefetch)
                ch.basic_consume(WORK_QUEUE, self._consumer(ch, generation))
            self._ready.set()
            while not self._stopping.is_set():
                conn.process_data_events(time_limit=IO_SLICE_SECS)
                self._drain_commands(ch, generation)
        finally:
            self._ready.clear()
            self._fail_pending()
            with contextlib.suppress(Exception):
                conn.close()

    def _consumer(self, ch: Any, generation: int) -> Callable[..., None]:
        def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
            try:
                delivery_id = str(json.loads(body)["delivery_id"])
            except (ValueError, KeyError, TypeError):
                log.error("webhook queues: dropping an undecodable message",
                          extra={"body": body[:200]})
                ch.basic_ack(method.delivery_tag)
                return
            assert self._loop is not None and self._on_delivery is not None
            self._loop.call_soon_threadsafe(self._on_delivery, delivery_id,
                                            (generation, method.delivery_tag))

        return on_message

    def _drain_commands(self, ch: Any, generation: int) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "ack":
                gen, tag = command[1]
                if gen == generation:  # else the message was requeued when its connection went
                    ch.basic_ack(tag)
                continue
            _, delivery_id, delay_s, fut = command
            props = pika.BasicProperties(delivery_mode=_PERSISTENT,
                                         content_type="application/json",
                                         expiration=str(delay_s * 1000) if delay_s else None)
            try:
                ch.basic_publish("", retry_queue(delay_s) if delay_s else WORK_QUEUE,
                                 json.dumps({"delivery_id": delivery_id}).encode(), props,
                                 mandatory=True)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                self._settle(fut, BrokerUnavailable(f"webhook queue refused it: {exc!r}"))
                continue
            except Exception as exc:
                self._settle(fut, BrokerUnavailable(f"webhook queue publish failed: {exc!r}"))
                raise
            self._settle(fut, None)

    def _fail_pending(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "publish":
                self._settle(command[3], BrokerUnavailable("RabbitMQ is not connected"))

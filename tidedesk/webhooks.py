"""The webhook outbox: events become durable delivery rows, and a dispatcher POSTs them.

- :meth:`WebhookOutbox.emit` is the seam the chat node and the router call (with a payload
  from :mod:`tidedesk.events`). It writes one delivery row per subscribed hook in the same
  database as the history, and returns; no receiver is contacted on that path, so a slow or
  dead receiver never slows a chat. When no hook wants the event it costs a dictionary lookup
  (the hook list is cached for :data:`HOOK_CACHE_SECS`; changes on another node are seen
  within that time, changes on this node at once).
- :meth:`WebhookOutbox.start` runs the dispatcher (embedded process and routers). Embedded,
  it polls the table for due rows; in a cluster the due delivery ids travel through RabbitMQ
  (``tidedesk/webhook_queues.py``: a work queue, and retry queues that dead-letter back to it
  when a message's TTL runs out), with a sweeper for rows that never reached it. Either way a
  row is claimed with a lease before it is sent (so a duplicate sends nothing twice), POSTed
  signed, at most ``per_url`` at once per receiver, and recorded (status, code, latency). A
  failure is tried again after :func:`tidedesk.events.retry_delay`; past the horizon the
  delivery fails and the hook is marked failing until a delivery succeeds.
- Receivers' addresses are checked where the connection is made: the resolver of the HTTP
  client returns only addresses :func:`tidedesk.events.address_allowed` accepts, so a name
  that resolves to a public address at creation and to 127.0.0.1 later (DNS rebinding) is
  still refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from tidedesk import events
from tidedesk.errors import Unavailable
from tidedesk.storage import Storage
from tidedesk.storage.database import new_id
from tidedesk.storage.records import Webhook, WebhookDelivery
from tidedesk.webhook_queues import RabbitWebhookQueues, Tag

log = logging.getLogger(__name__)

# How long a node trusts its list of hooks before reading it again (settings on every node
# without a restart: DB + short cache).
HOOK_CACHE_SECS = 2.0
# The dispatcher looks for due deliveries this often when nothing wakes it.
POLL_SECS = 0.5
# A claimed delivery is left alone by other dispatchers this long (longer than one attempt).
LEASE_SECS = 60.0
DUE_BATCH = 100
# Cluster: how often a dispatcher looks for due rows that never reached RabbitMQ (a publish
# failed, or a node died between the insert and the publish), and how overdue they must be
# (well past the lease, so a row that is being sent is left alone).
SWEEP_SECS = 30.0
SWEEP_GRACE_SECS = LEASE_SECS + 30.0
CLOCK_SKEW_SECS = 5.0


class AddressRefused(OSError):
    """The receiver's name resolves only to addresses a webhook may not reach."""


class CheckingResolver(Resolver):
    """Resolves like the default resolver, then keeps only the allowed addresses: the HTTP
    client connects to what this returns, so the check is on the address actually used."""

    def initialize(self, allowed: Callable[[], tuple[Any, ...]]) -> None:
        self._inner = DefaultLoopResolver()
        self._allowed = allowed  # read at each resolution: the outbox's networks now

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        found = await self._inner.resolve(host, port, family)
        ok = [(fam, addr) for fam, addr in found
              if events.address_allowed(addr[0], self._allowed())]
        if not ok:
            raise AddressRefused(f"{host} resolves only to addresses webhooks may not reach "
                                 "(loopback, private, link-local); see "
                                 "TIDEDESK_WEBHOOK_ALLOWED_NETWORKS")
        return ok


def receiver_key(url: str) -> str:
    """What the per-receiver concurrency cap counts by: host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


class WebhookOutbox:
    def __init__(self, storage: Storage, *, allowed_networks: tuple[str, ...] = (),
                 per_url: int = 4, clock: Callable[[], float] = time.time,
                 queues: RabbitWebhookQueues | None = None) -> None:
        self.storage = storage
        # Cluster: due deliveries travel through RabbitMQ (tidedesk/webhook_queues.py);
        # embedded (None): the dispatcher polls the table.
        self.queues = queues
        self._publisher_started = False
        self.allowed = events.parse_networks(allowed_networks)
        self.per_url = per_url
        self.clock = clock
        self._hooks: list[Webhook] | None = None
        self._hooks_lock = asyncio.Lock()
        self._hooks_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._caps: dict[str, asyncio.Semaphore] = {}
        self._client: SimpleAsyncHTTPClient | None = None

    # -- emitting (chat nodes and routers) -----------------------------------------------------
    def invalidate(self) -> None:
        """Forget the cached hook list (a hook was added or removed on this node)."""
        self._hooks = None

    def listening(self, event: str) -> bool:
        """False only when the cached hook list is fresh and no hook takes ``event``: then
        :meth:`emit` would do nothing, and the caller may skip building the event (the router
        does for every message, issue 17). True when unsure (the list is read again on emit)."""
        hooks = self._hooks
        if hooks is None or time.monotonic() - self._hooks_at > HOOK_CACHE_SECS:
            return True
        return any(event in h.events for h in hooks)

    async def hooks(self) -> list[Webhook]:
        """The live hooks, read at most every HOOK_CACHE_SECS (one read for every event that
        arrives meanwhile)."""
        if self._hooks is not None and time.monotonic() - self._hooks_at <= HOOK_CACHE_SECS:
            return self._hooks
        async with self._hooks_lock:
            now = time.monotonic()
            if self._hooks is None or now - self._hooks_at > HOOK_CACHE_SECS:
                self._hooks = await self.storage.webhooks.all()
                self._hooks_at = now
            return self._hooks

    async def emit(self, event: str, data: dict[str, Any], *,
                   event_id: str | None = None) -> None:
        """Hand an event to every hook subscribed to it: durable once this returns. Raises
        :class:`~tidedesk.errors.StorageUnavailable` when the database is down, so the
        caller's own retry (the broker's redelivery) emits it again. ``event_id`` names an
        event that may be emitted more than once (a redelivered message): each hook then
        gets it once."""
        hooks = [h for h in await self.hooks() if event in h.events]
        if not hooks:
            return
        now = self.clock()
        event_id = event_id or new_id()
        body = events.event_body(event, data, event_id=event_id, ts=now).decode()
        ids = await self.storage.webhooks.add_deliveries(hooks, event_id=event_id,
                                                         event=event, ts=now, body=body, now=now)
        await self._queue_now(ids)
        self._wake.set()

    async def _queue_now(self, ids: list[str]) -> None:
        """Cluster: put new due deliveries on the work queue. The rows are durable already;
        one that could not be queued is found by the sweeper (:data:`SWEEP_SECS`)."""
        if self.queues is None or not ids:
            return
        if not self._publisher_started:
            self._publisher_started = True
            await self.queues.start()
        try:
            for delivery_id in ids:
                await self.queues.publish(delivery_id)
        except Unavailable as exc:
            log.warning("webhook deliveries not queued; the sweeper will",
                        extra={"error": str(exc)})

    async def resend(self, delivery_id: str) -> None:
        """After the row was set due again ("send again"): deliver it soon."""
        await self._queue_now([delivery_id])
        self._wake.set()

    # -- dispatching (embedded process and routers) -------------------------------------------
    async def start(self) -> None:
        """Run the dispatcher: poll the table (embedded), or consume RabbitMQ's work queue
        and sweep for rows that never reached it (cluster)."""
        self._client = SimpleAsyncHTTPClient(
            force_instance=True, max_clients=1000,
            resolver=CheckingResolver(allowed=lambda: self.allowed))
        if self.queues is None:
            self._task = asyncio.create_task(self._loop())
        else:
            self._publisher_started = True
            await self.queues.start(on_delivery=self._on_queued)
            self._task = asyncio.create_task(self._sweep_loop())

    def _on_queued(self, delivery_id: str, tag: Tag) -> None:
        task = asyncio.create_task(self._queued_attempt(delivery_id, tag))
        self._inflight[f"{delivery_id}:{tag}"] = task
        task.add_done_callback(self._done(f"{delivery_id}:{tag}"))

    async def _queued_attempt(self, delivery_id: str, tag: Tag) -> None:
        """One message of the work queue: claim the row (a duplicate or a row already sent
        claims nothing), send, and queue the retry before acknowledging."""
        assert self.queues is not None
        try:
            now = self.clock()
            # The message expires at the row's next_at; clocks of nodes differ a little.
            if await self.storage.webhooks.claim(delivery_id, now + CLOCK_SKEW_SECS,
                                                 LEASE_SECS):
                delivery = await self.storage.webhooks.delivery(delivery_id)
                if delivery is not None:
                    due = await self._attempt(delivery)
                    if due is not None:
                        await self.queues.publish(delivery_id,
                                                  events.retry_delay(delivery.attempts + 1))
        except Exception as exc:
            # Not acknowledged: RabbitMQ gives it again when this connection ends; the row's
            # lease lets the sweeper send it otherwise.
            log.warning("webhook delivery left for a retry", extra={"delivery": delivery_id,
                                                                    "error": str(exc)})
            return
        self.queues.ack(tag)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECS)
            try:
                now = self.clock()
                stale = await self.storage.webhooks.due(now - SWEEP_GRACE_SECS, DUE_BATCH)
                await self._queue_now([d.id for d in stale])
            except Exception as exc:
                log.warning("webhook sweep failed", extra={"error": str(exc)})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.queues is not None:
            await self.queues.close()

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.dispatch_due()
            except Exception as exc:  # the database is down, say: the next round retries
                log.warning("webhook dispatch round failed", extra={"error": str(exc)})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECS)

    async def dispatch_due(self) -> None:
        now = self.clock()
        for delivery in await self.storage.webhooks.due(now, DUE_BATCH):
            if delivery.id in self._inflight:
                continue
            if not await self.storage.webhooks.claim(delivery.id, now, LEASE_SECS):
                continue  # another dispatcher has it
            task = asyncio.create_task(self._polled_attempt(delivery))
            self._inflight[delivery.id] = task
            task.add_done_callback(self._done(delivery.id))

    def _done(self, delivery_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(delivery_id, None)

        return done

    async def _polled_attempt(self, delivery: WebhookDelivery) -> None:
        due = await self._attempt(delivery)
        if due is not None:
            # Wake the loop when this retry comes due (it polls anyway; this keeps the delay
            # exact when the loop would otherwise sleep through it).
            delay = max(0.0, due - self.clock()) + 0.01
            asyncio.get_running_loop().call_later(delay, self.wake)

    async def _attempt(self, delivery: WebhookDelivery) -> float | None:
        """POST one delivery and record the outcome; returns when to try again, or None
        (delivered, given up, or the hook is gone)."""
        hook = await self.storage.webhooks.get(delivery.hook_id)
        if hook is None:
            await self.storage.webhooks.record_attempt(
                delivery.id, status="failed", attempts=delivery.attempts,
                next_at=delivery.next_at, code=None, latency_ms=None,
                error="the webhook was deleted", now=self.clock())
            return None
        cap = self._caps.setdefault(receiver_key(hook.url), asyncio.Semaphore(self.per_url))
        async with cap:
            code, latency_ms, error = await self._post(hook, delivery.body.encode())
        attempts = delivery.attempts + 1
        now = self.clock()
        if code is not None and 200 <= code < 300:
            await self.storage.webhooks.record_attempt(
                delivery.id, status="delivered", attempts=attempts, next_at=now, code=code,
                latency_ms=latency_ms, error="", now=now)
            if hook.failing_since is not None:
                await self.storage.webhooks.set_failing(hook.id, None)
                self.invalidate()
            return None
        due = events.next_attempt(attempts, delivery.created_at, now)
        await self.storage.webhooks.record_attempt(
            delivery.id, status="pending" if due is not None else "failed", attempts=attempts,
            next_at=due if due is not None else now, code=code, latency_ms=latency_ms,
            error=error, now=now)
        if due is None:
            log.warning("webhook delivery gave up; hook marked failing",
                        extra={"hook": hook.id, "delivery": delivery.id})
            await self.storage.webhooks.set_failing(hook.id, now)
            self.invalidate()
        return due

    async def _post(self, hook: Webhook, body: bytes) -> tuple[int | None, int | None, str]:
        """(status code or None, latency in ms or None, error text) of one POST."""
        assert self._client is not None, "start() the outbox before dispatching"
        request = HTTPRequest(
            hook.url, method="POST", body=body, follow_redirects=False,
            connect_timeout=events.DELIVERY_TIMEOUT_SECS,
            request_timeout=events.DELIVERY_TIMEOUT_SECS,
            headers={"Content-Type": "application/json", "User-Agent": "Tidedesk-Webhook/1",
                     events.SIGNATURE_HEADER: events.signature(hook.secret, body)})
        started = time.perf_counter()
        try:
            response = await self._client.fetch(request, raise_error=False)
        except AddressRefused as exc:
            return None, None, str(exc)
        except HTTPClientError as exc:  # timeouts arrive as 599
            return None, None, str(exc)
        except OSError as exc:
            return None, None, f"connection failed: {exc}"
        latency = int((time.perf_counter() - started) * 1000)
        if response.code == 599:
            return None, latency, str(response.error or "no answer")
        return response.code, latency, "" if response.code < 300 else f"HTTP {response.code}"

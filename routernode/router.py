"""The router: consumes the inbound queue, stores history in batches, routes chats and sends
deliveries to the chat nodes where the recipients are connected.

Inbound events, published by chat nodes (schema and binary encoding: ``tidedesk.envelopes``):

- ``message``: ``conversation_id, visitor_id, seq, id, from, sender_id, name, body, ts, private``
- ``opened``: ``conversation_id, visitor_id, tags`` (a new conversation wants an agent)
- ``close``: ``conversation_id, by``
- ``transfer``: ``conversation_id, by, to_agent | to_pool``
- ``agent_status``: ``agent_id, status, pools, max_chats, name``

Deliveries (to ``node_queue(node)``): a frame for ``visitor:<id>`` or ``agent:<id>``.

An envelope that does not follow the schema is logged, counted
(``tidedesk_envelopes_rejected_total``) and acknowledged: redelivering it would fail the same way
forever and hold up the queue.

Any number of routers may run side by side: every state change that two routers could race on is
an atomic store operation (claim, release, dequeue), and storing is idempotent on the client id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from routernode.bots import Bots, bot_key
from routernode.lifecycle import Lifecycle
from routernode.routing import anyone_online, choose_agent, fallback_due
from tidedesk import events, logs, metrics
from tidedesk.broker import INBOUND_QUEUE, Broker, Envelope
from tidedesk.delivery import deliver, start_fanout
from tidedesk.envelopes import (
    EVENT_TYPES,
    AgentStatusEvent,
    CloseEvent,
    EnvelopeError,
    MessageEvent,
    OpenedEvent,
    TransferEvent,
    decode_inbound,
)
from tidedesk.errors import Unavailable
from tidedesk.frames import (
    AgentAssignedFrame,
    AgentRef,
    BusyFrame,
    ClosedFrame,
    ErrorFrame,
    Frame,
    MessageFrame,
    QueueFrame,
    StateFrame,
    UnassignedFrame,
    VisitorAssignedFrame,
    attachments_json,
    visitor_summary,
)
from tidedesk.routing_rules import RoutingConfig
from tidedesk.site_directory import SiteDirectory
from tidedesk.storage import Storage
from tidedesk.store import Store

log = logging.getLogger(__name__)
# Bound once: .labels() is a lock and a dict lookup per event (issue 17).
_ROUTER_EVENTS = {kind: metrics.ROUTER_EVENTS.labels(kind=kind) for kind in EVENT_TYPES}

# A history batch holds at most this many rows (group commit: see Batcher).
BATCH_MAX_ROWS = 100
# While busy (rows came in during the last write), the next write waits this long to gather
# more. Deliveries do not wait for the commit (they leave on durable), so this costs clients
# nothing; it saves a thread hand-off and an insert per row at a high rate (issue 17).
BATCH_LINGER_SECS = 0.005
# How often waiting queues are checked for fallbacks and drained (safety net across routers).
QUEUE_TICK_SECS = 1.0
# Every this many ticks, chats the database says are waiting are put back in the queues (they
# vanish when the store restarts empty); enqueueing is idempotent.
RECOVER_EVERY_TICKS = 10
# A claim lost to another router is retried this many times with fresh loads.
CLAIM_RETRIES = 5
# When a backend is down, a handler holds its message this long before giving it back to the
# broker: the prefetch window fills up, so the broker stops sending and nothing spins.
UNAVAILABLE_BACKOFF_SECS = 1.0
# issue 13: noting a reply mail is tried this many times (a lock clash between routers writing
# the same conversation's row is retried; a database that stays down loses the mail, never a
# message).
MAIL_NOTE_ATTEMPTS = 3


class Batcher:
    """Group commit: writes rows with one ``insert_many`` per batch, one batch at a time.

    A row that arrives while no write is in flight is written at once (a quiet desk pays one
    commit, never a timer); rows that arrive while a write is in flight are gathered, up to
    ``max_rows``, for the next write, which starts ``linger_s`` after the current one ends (a
    busy desk batches by back-pressure, and the linger keeps batches from shrinking to a row or
    two when commits are quick). Batches commit in the order their rows arrived, so the waiters
    of one batch are woken before any row of a later batch is written.

    ``add`` returns once the row's batch is committed; it raises if the commit failed, so the
    caller does not acknowledge the broker and the message is redelivered.
    """

    def __init__(self, storage: Storage, max_rows: int = BATCH_MAX_ROWS,
                 linger_s: float = BATCH_LINGER_SECS) -> None:
        self._storage = storage
        self._max_rows = max_rows
        self._linger_s = linger_s
        self._rows: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, row: dict[str, Any]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rows.append(row)
        self._waiters.append(fut)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_all())
        await fut

    async def _write_all(self) -> None:
        try:
            first = True
            while self._rows:
                if not first and self._linger_s > 0 and len(self._rows) < self._max_rows:
                    await asyncio.sleep(self._linger_s)  # busy: let the next batch fill up
                first = False
                rows, waiters = self._rows[:self._max_rows], self._waiters[:self._max_rows]
                del self._rows[:self._max_rows], self._waiters[:self._max_rows]
                await self._write(rows, waiters)
        finally:
            self._writer = None

    async def _write(self, rows: list[dict[str, Any]], waiters: list[asyncio.Future[None]]) -> None:
        started = time.perf_counter()
        try:
            await self._storage.messages.insert(rows)
        except Exception as exc:
            metrics.DB_WRITE_FAILURES.inc()
            log.warning("history batch failed; messages stay in the broker",
                        extra={"rows": len(rows), "error": str(exc)})
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        metrics.DB_WRITE_LATENCY.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(rows))
        metrics.MESSAGES_STORED.inc(len(rows))
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class InOrder:
    """Per-key FIFO sections: tasks that enter a key's section in some order run it in that
    order, one at a time; a key with nobody inside or waiting holds no memory.

    ``async with order.section(key):``. Built on plain futures rather than an
    ``asyncio.Lock`` per key behind ``contextlib.asynccontextmanager``: the section is entered
    for every message, nearly always with nobody inside, and the generator-based manager and
    the lock cost about 3% of the router's time in P2 (issue 17); a free key now costs a dict
    lookup and an insert. On leaving, the section is handed to the first task still waiting.
    """

    def __init__(self) -> None:
        # key → the futures of the tasks waiting for it, in arrival order; present while held.
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def section(self, key: str) -> _Section:
        return _Section(self, key)

    def _leave(self, key: str) -> None:
        waiting = self._waiting[key]
        while waiting:
            fut = waiting.popleft()
            if not fut.done():  # (a cancelled waiter is skipped)
                fut.set_result(None)  # the section is theirs now
                return
        del self._waiting[key]


class _Section:
    __slots__ = ("_key", "_order")

    def __init__(self, order: InOrder, key: str) -> None:
        self._order, self._key = order, key

    async def __aenter__(self) -> None:
        all_waiting = self._order._waiting
        waiting = all_waiting.get(self._key)
        if waiting is None:
            all_waiting[self._key] = collections.deque()  # free: ours at once
            return
        fut = asyncio.get_running_loop().create_future()
        waiting.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._order._leave(self._key)  # handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    waiting.remove(fut)
            raise

    async def __aexit__(self, *_exc: object) -> None:
        self._order._leave(self._key)


class Router:
    def __init__(self, *, broker: Broker, store: Store, storage: Storage,
                 routing: RoutingConfig, max_waiting_per_pool: int = 500,
                 prefetch: int = 200, clock: Callable[[], float] = time.time,
                 envelope_format: str = "binary", agent_grace_s: float = 30.0,
                 idle_close_s: float = 1800.0,
                 reply_mail_delay_s: float | None = None,
                 emit: events.Emitter = events.no_events,
                 listening: Callable[[str], bool] = lambda event: True) -> None:
        self.broker = broker
        self.emit = emit  # webhook events (tidedesk/events.py), durable once it returns
        # False when no hook takes the event (WebhookOutbox.listening): emit would do nothing.
        self.listening = listening
        self.store = store
        self.storage = storage
        self.routing = routing
        self.sites = SiteDirectory(storage, routing)  # each site's rules and hours
        self.bots = Bots(broker=broker, store=store, storage=storage, clock=clock,
                         envelope_format=envelope_format, route=self._route_after_bot)
        self.max_waiting_per_pool = max_waiting_per_pool
        self.prefetch = prefetch
        self.clock = clock
        self.envelope_format = envelope_format  # what deliveries are written in
        self.batcher = Batcher(storage)
        self._fanout_order = InOrder()
        self._tick_task: asyncio.Task[None] | None = None
        self.started = False
        self._visitor_of: dict[str, str] = {}
        self._sent_position: dict[str, int] = {}
        # Give-back on leave, pool transfers, tickets, idle close (routernode/lifecycle.py).
        self.lifecycle = Lifecycle(self, grace_s=agent_grace_s, idle_close_s=idle_close_s)
        # issue 13: None = no mail; else an agent reply to an absent visitor is noted in the
        # mail outbox, due this many seconds later.
        self.reply_mail_delay_s = reply_mail_delay_s
        self._mail_notes: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        for pool in self.routing.pools:  # series exist (at 0) before the first chat
            metrics.ASSIGNMENTS.labels(pool=pool)
            metrics.WAITING.labels(pool=pool)
        await self.recover()
        await self.broker.consume(INBOUND_QUEUE, self.handle, prefetch=self.prefetch)
        self._tick_task = asyncio.create_task(self._tick_loop())
        self.started = True
        metrics.READY.set(1)  # a router process reports it too (a chat node sets it as well)

    def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if not self.broker.ready:
            return False, "broker unavailable"
        if not self.store.ready:
            return False, "session store unavailable"
        if not self.storage.available:
            return False, "database unavailable"
        return True, "ok"

    async def stop(self) -> None:
        self.bots.stop()
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)
        await asyncio.gather(*self._mail_notes, return_exceptions=True)

    async def recover(self) -> None:
        """Put chats the database says are waiting back in the queues (after a store restart)."""

        for conv in await self.storage.conversations.queued_with_tags():
            self._visitor_of[conv.id] = conv.visitor_id
            await self.store.enqueue(conv.pool, conv.id, self.routing.is_vip(conv.tags),
                                     conv.created_at)

    # -- consuming ---------------------------------------------------------------------------
    async def handle(self, envelope: Envelope) -> None:
        try:
            event = decode_inbound(envelope.body)
        except EnvelopeError as exc:
            metrics.ENVELOPES_REJECTED.labels(queue="inbound").inc()
            log.error("dropping undecodable inbound message",
                      extra={"error": str(exc), "body": envelope.body[:200]})
            return
        kind = event.KIND
        handler = getattr(self, f"on_{kind}")
        metrics.ROUTER_INFLIGHT.inc()
        # Every log line of this event names its conversation (the memory broker runs many
        # events in one task, hence a context that is undone, not a bind).
        with logs.context(conversation_id=getattr(event, "conversation_id", None)):
            try:
                await handler(event)
                _ROUTER_EVENTS[kind].inc()
            except Unavailable as exc:
                log.warning("backend unavailable; message goes back to the broker",
                            extra={"kind": kind, "error": str(exc)})
                await asyncio.sleep(UNAVAILABLE_BACKOFF_SECS)
                raise
            finally:
                metrics.ROUTER_INFLIGHT.dec()

    async def deliver(self, who: str, frame: Frame) -> None:
        await deliver(self.broker, self.store, who, frame, self.clock(), self.envelope_format)

    async def on_message(self, event: MessageEvent) -> None:
        """Deliver, then store; the inbound message is acknowledged after both.

        The message is durable before it gets here (RabbitMQ confirmed it to the chat node, and
        it stays in the inbound queue until this handler returns), so it is delivered at once
        and committed beside (group commit). A router that dies between the two leaves it in
        the queue: the next router delivers it again (each connection shows a seq once) and
        stores it (once: the unique client-id key), under the same seq.
        """
        conv_id = event.conversation_id
        row = {
            "conversation_id": conv_id, "seq": event.seq, "client_id": event.id,
            "sender_type": event.from_, "sender_id": event.sender_id,
            "sender_name": event.name, "body": event.body,
            "private": event.private, "ts": event.ts,
            "attachments": attachments_json(event.attachments),
        }
        frame = MessageFrame(conversation_id=conv_id, seq=event.seq, id=event.id,
                             from_=event.from_, body=event.body, ts=event.ts, name=event.name,
                             private=event.private, attachments=event.attachments)
        visitor = None if event.private else f"visitor:{event.visitor_id}"
        # One conversation's messages go into the recent history and out to the nodes in the
        # order this router took them from the queue (seq order while they arrive in it), so a
        # connection sees them by seq and a resume reading the history finds no hole a later
        # append fills. The section ends once every publish is written to the broker (the
        # confirms are awaited outside it); one channel keeps that order to each node queue.
        async with self._fanout_order.section(conv_id):
            recipients = await self.store.message_fanout(conv_id, frame.to_dict(), visitor,
                                                         self.clock())
            # One envelope per node, whoever of the recipients are there.
            confirm = start_fanout(self.broker, recipients, frame, self.envelope_format)
        try:
            await self.batcher.add(row)
        except BaseException:
            await asyncio.gather(confirm, return_exceptions=True)
            raise
        log.debug("message stored", extra={"seq": event.seq, "client_id": event.id})
        if self.listening(events.MESSAGE_CREATED):
            await self.emit(events.MESSAGE_CREATED, events.message_data(
                conversation_id=conv_id, seq=event.seq, message_id=event.id,
                sender=event.from_, sender_id=event.sender_id, name=event.name,
                body=event.body, ts=event.ts, private=event.private),
                event_id=events.message_event_id(conv_id, event.id))
        await confirm
        if visitor is not None and event.from_ == "agent" and not recipients.get(visitor):
            self.note_reply_mail(event)
        if not event.private and event.from_ != "system" and await self.sites.any_bot():
            await self.bots.on_message(conv_id, event.from_, event.sender_id)

    def note_reply_mail(self, event: MessageEvent) -> None:
        """issue 13: the visitor is not connected, so the reply may go out by e-mail. One row in
        the mail outbox, written in a task of its own: the chat path never waits for it (the
        sender, ``tidedesk.mail.outbox``, decides later whether a mail goes out)."""
        if self.reply_mail_delay_s is None:
            return
        task = asyncio.create_task(self._note_reply_mail(event))
        self._mail_notes.add(task)
        task.add_done_callback(self._mail_notes.discard)

    async def _note_reply_mail(self, event: MessageEvent) -> None:
        assert self.reply_mail_delay_s is not None
        for attempt in range(1, MAIL_NOTE_ATTEMPTS + 1):
            try:
                await self.storage.mail.note_reply(event.conversation_id, event.visitor_id,
                                                   event.seq,
                                                   self.clock() + self.reply_mail_delay_s)
                return
            except Exception as exc:  # a deadlock between routers, or the database is down
                log.warning("reply mail not noted", extra={"error": str(exc), "seq": event.seq,
                                                           "attempt": attempt})
                await asyncio.sleep(UNAVAILABLE_BACKOFF_SECS * attempt)

    async def on_opened(self, event: OpenedEvent) -> None:
        conv_id, visitor_id = event.conversation_id, event.visitor_id
        tags = event.tags
        self._visitor_of[conv_id] = visitor_id
        if await self.store.owner(conv_id) is not None:
            return  # redelivered: already routed
        conv = await self.storage.conversations.get(conv_id)
        site = conv.site if conv is not None else "default"
        routing = await self.sites.routing(site)
        rule = routing.rule_for(tags)
        bot = (await self.sites.settings(site) or {}).get("bot")
        if bot:
            await self._to_bot(conv_id, visitor_id, bot, bot.get("pool") or rule.pool)
            return
        await self.route(conv_id, visitor_id, rule.pool, vip=routing.is_vip(tags),
                         fallback=rule.fallback, routing=routing)

    async def _to_bot(self, conv_id: str, visitor_id: str, bot: dict[str, Any],
                      pool: str) -> None:
        """The site answers with a bot first: the visitor sees its name; no agent slot."""
        await self.bots.start(conv_id, visitor_id, bot, pool)
        await self.storage.conversations.update(conv_id, state="assigned", pool=pool,
                                               agent_id=None)
        await self.deliver(f"visitor:{visitor_id}", VisitorAssignedFrame(
            agent=AgentRef(id="bot", name=bot["name"])))
        await self.deliver(f"visitor:{visitor_id}", StateFrame(state="assigned"))

    async def _route_after_bot(self, conv_id: str, visitor_id: str, pool: str | None) -> None:
        conv = await self.storage.conversations.get(conv_id)
        routing = await self.sites.routing(conv.site if conv is not None else "default")
        await self.route(conv_id, visitor_id, pool or routing.rule_for(()).pool,
                         vip=await self._is_vip(visitor_id), fallback=None, routing=routing)

    async def on_agent_status(self, event: AgentStatusEvent) -> None:
        agent_id = event.agent_id
        pools = event.pools
        await self.store.agent_update(agent_id, status=event.status, pools=pools,
                                      max_chats=event.max_chats, name=event.name,
                                      now=self.clock())
        if event.status == "offline" and event.give_back:
            await self.lifecycle.agent_left(agent_id)  # signed out or chose offline
        if event.status != "online":
            return
        # Chats the database gives this agent but the store forgot (store restart) are theirs.
        for conv in await self.storage.conversations.open_for_agent(agent_id):
            if await self.store.owner(conv.id) is None:
                await self.store.claim(conv.id, agent_id, self.clock())
        for pool in pools:
            await self.drain(pool)
        await self.lifecycle.route_tickets(pools)

    async def on_close(self, event: CloseEvent) -> None:
        conv_id = event.conversation_id
        conv = await self.storage.conversations.get(conv_id)
        if conv is None or conv.state == "closed":
            return
        owner = await self.store.release(conv_id)
        await self.store.dequeue(conv.pool, conv_id)
        await self.store.kv_delete(bot_key(conv_id))
        await self.storage.conversations.update(conv_id, state="closed")
        await self.lifecycle.closed(conv_id)
        self._forget(conv_id)
        await self.store.forget_closed(conv_id)  # bounded memory; the database remembers
        await self.storage.audit.record(event.by, "conversation.close", conv_id)
        await self.emit(events.CONVERSATION_CLOSED, events.conversation_data(
            conversation_id=conv_id, visitor_id=conv.visitor_id, state="closed",
            pool=conv.pool, agent_id=owner or conv.agent_id))
        await self.deliver(f"visitor:{conv.visitor_id}", StateFrame(state="closed"))
        agent_id = owner or conv.agent_id
        if agent_id:
            await self.deliver(f"agent:{agent_id}", ClosedFrame(conversation_id=conv_id))
        await self._drain_pools_of(agent_id)
        await self.broadcast_positions(conv.pool)

    async def on_transfer(self, event: TransferEvent) -> None:
        conv_id, by = event.conversation_id, event.by
        # From a bot (its hand-off call; "*" = the bot's own pool) or away from one.
        if await self.bots.handoff(conv_id, None if event.to_pool == "*" else event.to_pool,
                                   by=by):
            return
        conv = await self.storage.conversations.get(conv_id)
        if conv is None or conv.state == "closed":
            await self.deliver(f"agent:{by}", ErrorFrame(code="transfer_failed",
                                                          message="the conversation is closed"))
            return
        old = await self.store.owner(conv_id)
        to_agent, to_pool = event.to_agent, event.to_pool
        if to_agent is not None:
            target = await self.store.agent_get(to_agent)
            if target is None or not target.has_room or to_agent == old:
                await self.deliver(f"agent:{by}", ErrorFrame(
                    code="transfer_failed",
                    message="that agent is not online or has no free slot; pick another "
                            "agent or transfer to a pool"))
                return
            # One atomic move (issue 13): the chat is never ownerless in between.
            if old is not None:
                moved = await self.store.handover(conv_id, old, to_agent,
                                                  self.clock()) == "moved"
            else:
                moved = await self.store.claim(conv_id, to_agent, self.clock())
                if moved:
                    await self.store.dequeue(conv.pool, conv_id)
            if not moved:
                await self.deliver(f"agent:{by}", ErrorFrame(code="transfer_failed",
                                                              message="the agent became busy; "
                                                                      "try again"))
                return
            await self._announce_assignment(conv_id, conv.visitor_id, to_agent, conv.pool)
        else:
            # Moves the chat for real (never back to the same agent) or refuses with a reason.
            await self.lifecycle.transfer_to_pool(conv, by, str(to_pool))
            await self.storage.audit.record(by, "conversation.transfer", conv_id,
                                            {"from": old, "to_pool": to_pool})
            return
        await self.storage.audit.record(by, "conversation.transfer", conv_id,
                                 {"from": old, "to_agent": to_agent, "to_pool": to_pool})
        if old is not None and old != to_agent:
            await self.deliver(f"agent:{old}", UnassignedFrame(conversation_id=conv_id))
            await self._drain_pools_of(old)

    # -- routing -----------------------------------------------------------------------------
    async def route(self, conv_id: str, visitor_id: str, pool: str, *, vip: bool,
                    fallback: str | None, routing: RoutingConfig | None = None) -> None:
        """Assign now, else queue (with the busy answer past the limit), else offline ticket.
        ``routing`` gives the business hours (the conversation's site's; else the
        installation's)."""
        self._visitor_of[conv_id] = visitor_id
        if await self._try_assign(conv_id, visitor_id, pool):
            return
        agents = await self.store.agents_in_pool(pool)
        if fallback is not None:
            agents += await self.store.agents_in_pool(fallback)
        if not anyone_online(agents) or not (routing or self.routing).is_open(self.clock()):
            await self.storage.conversations.update(conv_id, state="offline", pool=pool)
            await self.storage.tickets.open(conv_id, visitor_id)
            self._forget(conv_id)
            await self.emit(events.TICKET_CREATED, events.ticket_data(
                conversation_id=conv_id, visitor_id=visitor_id, status="open"))
            await self.deliver(f"visitor:{visitor_id}", StateFrame(state="offline"))
            return
        await self.store.enqueue(pool, conv_id, vip, self.clock())
        await self.storage.conversations.update(conv_id, state="queued", pool=pool, agent_id=None)
        await self.deliver(f"visitor:{visitor_id}", StateFrame(state="queued"))
        waiting = await self.store.waiting(pool)
        if len(waiting) > self.max_waiting_per_pool:
            position = 1 + [c for c, _ in waiting].index(conv_id)
            await self.deliver(f"visitor:{visitor_id}", BusyFrame(position=position))
        await self.broadcast_positions(pool)

    async def _try_assign(self, conv_id: str, visitor_id: str, pool: str) -> bool:
        for _ in range(CLAIM_RETRIES):
            agent = choose_agent(await self.store.agents_in_pool(pool))
            if agent is None:
                return False
            if await self.store.claim(conv_id, agent.agent_id, self.clock()):
                await self._announce_assignment(conv_id, visitor_id, agent.agent_id, pool)
                return True
            if await self.store.owner(conv_id) is not None:
                return True  # another router assigned it
        return False

    async def _announce_assignment(self, conv_id: str, visitor_id: str, agent_id: str,
                                   pool: str) -> None:
        await self.storage.conversations.update(conv_id, state="assigned", agent_id=agent_id,
                                               pool=pool)
        metrics.ASSIGNMENTS.labels(pool=pool).inc()
        self._sent_position.pop(conv_id, None)
        await self.emit(events.CONVERSATION_ASSIGNED, events.conversation_data(
            conversation_id=conv_id, visitor_id=visitor_id, state="assigned", pool=pool,
            agent_id=agent_id))
        agent = await self.store.agent_get(agent_id)
        visitor = await self.storage.visitors.get(visitor_id)
        await self.deliver(f"visitor:{visitor_id}", VisitorAssignedFrame(
            agent=AgentRef(id=agent_id, name=agent.name if agent else "")))
        await self.deliver(f"visitor:{visitor_id}", StateFrame(state="assigned"))
        await self.deliver(f"agent:{agent_id}", AgentAssignedFrame(
            conversation_id=conv_id, visitor=visitor_summary(visitor_id, visitor),
            last_seq=await self.store.last_seq(conv_id) or 0))

    async def drain(self, pool: str) -> None:
        """Serve the pool's queue head-first while an agent has a free slot."""
        changed = False
        for _ in range(1000):  # bounded: one pass can never loop forever
            waiting = await self.store.waiting(pool)
            if not waiting:
                break
            conv_id = waiting[0][0]
            if await self.store.owner(conv_id) is not None:
                await self.store.dequeue(pool, conv_id)
                changed = True
                continue
            agent = choose_agent(await self.store.agents_in_pool(pool))
            if agent is None:
                break
            if not await self.store.claim(conv_id, agent.agent_id, self.clock()):
                continue  # raced with another router; look again
            await self.store.dequeue(pool, conv_id)
            changed = True
            visitor_id = await self._visitor_id(conv_id)
            await self._announce_assignment(conv_id, visitor_id, agent.agent_id, pool)
        if changed:
            await self.broadcast_positions(pool)

    async def _drain_pools_of(self, agent_id: str | None) -> None:
        if agent_id is None:
            return
        agent = await self.store.agent_get(agent_id)
        for pool in agent.pools if agent else ():
            await self.drain(pool)

    async def _is_vip(self, visitor_id: str) -> bool:
        """A VIP keeps their priority when moved to another pool (fallback, transfer)."""
        visitor = await self.storage.visitors.get(visitor_id)
        return self.routing.is_vip(visitor.tag_list if visitor else ())

    def _forget(self, conv_id: str) -> None:
        """Drop the per-conversation caches of a chat that will never wait again."""
        self._visitor_of.pop(conv_id, None)
        self._sent_position.pop(conv_id, None)

    async def _visitor_id(self, conv_id: str) -> str:
        visitor_id = self._visitor_of.get(conv_id)
        if visitor_id is None:
            conv = await self.storage.conversations.get(conv_id)
            visitor_id = conv.visitor_id if conv else ""
            self._visitor_of[conv_id] = visitor_id
        return visitor_id

    async def broadcast_positions(self, pool: str) -> None:
        waiting = await self.store.waiting(pool)
        metrics.WAITING.labels(pool=pool).set(len(waiting))
        for position, (conv_id, _) in enumerate(waiting, start=1):
            if self._sent_position.get(conv_id) == position:
                continue
            self._sent_position[conv_id] = position
            await self.deliver(f"visitor:{await self._visitor_id(conv_id)}",
                               QueueFrame(position=position))

    async def tick(self) -> None:
        """Move chats that waited too long to their fallback pool, then drain every pool."""
        now = self.clock()
        for pool in dict.fromkeys((*self.routing.pools, *self.sites.pools())):
            rule = self.routing.rule_for_pool(pool)
            waiting = await self.store.waiting(pool)
            # Every router reports the shared queue's length each tick (dashboards take max()),
            # so the gauge is fresh even when another router served the queue.
            metrics.WAITING.labels(pool=pool).set(len(waiting))
            for conv_id, enqueued_at in waiting:
                target = fallback_due(rule, enqueued_at, now)
                if target and await self.store.dequeue(pool, conv_id):
                    visitor_id = await self._visitor_id(conv_id)
                    await self.route(conv_id, visitor_id, target,
                                     vip=await self._is_vip(visitor_id), fallback=None)
            await self.drain(pool)
        await self.lifecycle.tick()

    async def _tick_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(QUEUE_TICK_SECS)
            ticks += 1
            try:
                if ticks % RECOVER_EVERY_TICKS == 0:
                    await self.recover()
                await self.tick()
            except Unavailable as exc:
                log.warning("queue tick skipped: %s", exc)
            except Exception:
                log.exception("queue tick failed; next tick retries")

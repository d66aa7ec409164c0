"""The router's part of the conversation lifecycle (issue 13; the states and what moves them
are ``tidedesk/lifecycle.py``): chats given back by agents who leave, pool transfers that move
the chat for real or refuse, tickets routed again when agents come online, and chats whose
visitor left closed after a quiet while.

Held by :class:`~routernode.router.Router` (``router.lifecycle``) and kept apart from its batch
and delivery path. Every change two routers could race on is one atomic store operation
(``handover``, ``requeue_front``, ``release_from``, ``claim``; Lua on Redis) or guarded by a
``kv_swap`` lock, so any number of routers may run these side by side; an agent's limit is
never exceeded because only ``claim`` and ``handover`` add a chat to an agent, and both check it
inside the store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from routernode.routing import anyone_online, choose_agent
from tidedesk import metrics
from tidedesk.delivery import start_fanout
from tidedesk.frames import ClosedFrame, ErrorFrame, MessageFrame, StateFrame, UnassignedFrame
from tidedesk.i18n import text
from tidedesk.lifecycle import grace_expired, idle_close_due, presence_lapsed
from tidedesk.resume import reseed_floor
from tidedesk.storage import Storage
from tidedesk.storage.records import Conversation
from tidedesk.store import Store

if TYPE_CHECKING:
    from routernode.router import Router

log = logging.getLogger(__name__)

# A give-back or a pool transfer that loses a race for an agent's last slot looks again this
# many times with fresh loads.
HANDOVER_RETRIES = 5
# Offline conversations routed again per agent coming online (the rest wait for the next one,
# or for their visitor to reconnect).
TICKETS_PER_ONLINE = 200
# The idle sweep looks at this many quiet conversations per run, every this many queue ticks
# (about 10 s): bounded work however many chats are open.
IDLE_SWEEP_BATCH = 100
IDLE_SWEEP_EVERY_TICKS = 10
# One router closes a given idle chat: the others see this lock for a minute.
IDLE_LOCK_SECS = 60.0
# The client id of the system message an idle close adds (stored once per conversation).
IDLE_CLOSE_CLIENT_ID = "sys:idle-close"
# A console that connects says "online" (to the routers) a moment before its node writes its
# presence; an agent a node told the routers about less than this long ago is not counted gone
# for a lapsed presence. Milliseconds on a quiet node, seconds on a very busy one.
LAPSE_SETTLE_SECS = 5.0


class Lifecycle:
    def __init__(self, router: Router, *, grace_s: float, idle_close_s: float) -> None:
        self.router = router
        self.grace_s = grace_s
        self.idle_close_s = idle_close_s
        self._ticks = 0
        self._idle_cursor = 0.0  # updated_at of the last candidate of a full sweep

    @property
    def store(self) -> Store:
        return self.router.store

    @property
    def storage(self) -> Storage:
        return self.router.storage

    # -- agents who leave ----------------------------------------------------------------------
    async def agent_left(self, agent_id: str) -> dict[str, str]:
        """Give every open chat of ``agent_id`` back: to another free agent of its pool, else
        to the front of the pool's queue, else (nobody of the pool online) it becomes a ticket.
        Returns conversation id -> where it went."""
        out = {}
        for conv_id in await self.store.agent_conversations(agent_id):
            out[conv_id] = await self.give_back(conv_id, agent_id)
            metrics.GIVEN_BACK.labels(outcome=out[conv_id]).inc()
        if out:
            log.info("agent left: chats given back", extra={"agent": agent_id, "moved": out})
        agent = await self.store.agent_get(agent_id)
        await self.tickets_if_nobody_left(agent.pools if agent else ())
        return out

    async def tickets_if_nobody_left(self, pools: tuple[str, ...]) -> None:
        """The last agent of a pool (and of its fallback) left: the chats waiting in its
        queue would wait for nobody, so each becomes a ticket (state ``offline``; routed
        again when an agent comes online while its visitor is there)."""
        r = self.router
        for pool in pools:
            rule = r.routing.rule_for_pool(pool)
            agents = await self.store.agents_in_pool(pool)
            if rule is not None and rule.fallback:
                agents += await self.store.agents_in_pool(rule.fallback)
            if anyone_online(agents):
                continue
            for conv_id, _ in await self.store.waiting(pool):
                if await self.store.dequeue(pool, conv_id):
                    visitor_id = await r._visitor_id(conv_id)
                    await r.route(conv_id, visitor_id, pool,
                                  vip=await r._is_vip(visitor_id), fallback=None)

    async def give_back(self, conv_id: str, from_agent: str) -> str:
        """``assigned`` / ``queued`` / ``offline``; ``elsewhere`` when another router (or a
        take) moved it first; ``closed`` for a conversation that is over."""
        conv = await self.storage.conversations.get(conv_id)
        if conv is None or conv.state == "closed":
            await self.store.release_from(conv_id, from_agent)
            return "closed"
        moved = await self._hand_to_another(conv, from_agent, conv.pool)
        if moved is not None:
            return moved
        return await self._queue_or_ticket(conv, from_agent, conv.pool)

    async def _hand_to_another(self, conv: Conversation, from_agent: str,
                               pool: str) -> str | None:
        """Atomically move the chat to the best free agent of ``pool`` other than
        ``from_agent``: ``assigned``, ``elsewhere`` (no longer theirs), or None (nobody free)."""
        r = self.router
        for _ in range(HANDOVER_RETRIES):
            agents = [a for a in await self.store.agents_in_pool(pool)
                      if a.agent_id != from_agent]
            agent = choose_agent(agents)
            if agent is None:
                return None
            result = await self.store.handover(conv.id, from_agent, agent.agent_id, r.clock())
            if result == "not_owner":
                return "elsewhere"
            if result == "moved":
                await r._announce_assignment(conv.id, conv.visitor_id, agent.agent_id, pool)
                await r.deliver(f"agent:{from_agent}", UnassignedFrame(conversation_id=conv.id))
                return "assigned"
        return None

    async def _queue_or_ticket(self, conv: Conversation, from_agent: str, pool: str) -> str:
        r = self.router
        now = r.clock()
        others = [a for a in await self.store.agents_in_pool(pool) if a.agent_id != from_agent]
        if anyone_online(others) and r.routing.is_open(now):
            if not await self.store.requeue_front(conv.id, from_agent, pool, now):
                return "elsewhere"
            await self.storage.conversations.update(conv.id, state="queued", pool=pool,
                                                   agent_id=None)
            await r.deliver(f"agent:{from_agent}", UnassignedFrame(conversation_id=conv.id))
            await r.deliver(f"visitor:{conv.visitor_id}", StateFrame(state="queued"))
            r._sent_position.pop(conv.id, None)
            r._visitor_of[conv.id] = conv.visitor_id
            await r.broadcast_positions(pool)
            return "queued"
        if not await self.store.release_from(conv.id, from_agent):
            return "elsewhere"
        await self.storage.conversations.update(conv.id, state="offline", pool=pool,
                                               agent_id=None)
        await self.storage.tickets.open(conv.id, conv.visitor_id)
        await r.deliver(f"agent:{from_agent}", UnassignedFrame(conversation_id=conv.id))
        await r.deliver(f"visitor:{conv.visitor_id}", StateFrame(state="offline"))
        return "offline"

    async def sweep_grace(self) -> None:
        """Agents whose consoles have been gone past the grace period give their chats back
        (every router runs this; the store's atomic moves make it safe). An agent still
        ``online`` or ``away`` with no live connection anywhere (their chat node died without
        closing its sockets, so no disconnect came) is made ``offline`` first, since the
        moment their presence lapsed: from then on they count as disconnected, and
        reconnecting within the grace keeps their chats, as after any disconnect."""
        now = self.router.clock()
        seen: set[str] = set()
        for pool in self.router.routing.pools:
            for agent in await self.store.agents_in_pool(pool):
                if agent.agent_id in seen:
                    continue
                seen.add(agent.agent_id)
                status, since = agent.status, agent.status_since
                lapsed = await self._lapsed_since(agent.agent_id, status, agent.updated_at, now)
                if lapsed is not None:
                    status, since = "offline", lapsed
                if agent.open_chats > 0 and grace_expired(status, since, now, self.grace_s):
                    await self.agent_left(agent.agent_id)

    async def _lapsed_since(self, agent_id: str, status: str, updated_at: float,
                            now: float) -> float | None:
        """When an agent not ``offline`` went with their node (now ``offline`` since then in
        the store), or None (present, or another router or a node changed them first)."""
        if status == "offline":
            return None
        expiry = await self.store.presence_expiry(f"agent:{agent_id}")
        since = presence_lapsed(status, updated_at=updated_at, presence_expiry=expiry, now=now,
                                settle_s=LAPSE_SETTLE_SECS)
        if since is None or not await self.store.agent_mark_gone(
                agent_id, updated_at=updated_at, since=since, now=now):
            return None
        metrics.AGENTS_LAPSED.inc()
        log.warning("agent's chat node stopped heartbeating: counted offline",
                    extra={"agent": agent_id, "was": status, "since": since})
        return since

    # -- pool transfers ------------------------------------------------------------------------
    async def transfer_to_pool(self, conv: Conversation, by: str, pool: str) -> None:
        """Move the chat for real, or refuse with a reason (an error frame to ``by``): to
        another free agent of ``pool`` (never back to the agent who has it), else to the front
        of that pool's queue while someone else of it is online; with nobody else there the
        chat stays where it is."""
        r = self.router
        if pool not in r.routing.pools:
            await r.deliver(f"agent:{by}", ErrorFrame(
                code="transfer_failed", message=f"there is no pool {pool!r}; pick one of "
                f"{', '.join(r.routing.pools)}"))
            return
        owner = await self.store.owner(conv.id)
        if owner is None:  # a waiting chat or a ticket: routed in the new pool
            await self.store.dequeue(conv.pool, conv.id)
            await r.route(conv.id, conv.visitor_id, pool,
                          vip=await r._is_vip(conv.visitor_id), fallback=None)
            await r.broadcast_positions(conv.pool)
            return
        moved = await self._hand_to_another(conv, owner, pool)
        if moved == "assigned":
            await r._drain_pools_of(owner)
            return
        others = [a for a in await self.store.agents_in_pool(pool) if a.agent_id != owner]
        if moved is None and anyone_online(others) and r.routing.is_open(r.clock()):
            if await self.store.requeue_front(conv.id, owner, pool, r.clock()):
                await self.storage.conversations.update(conv.id, state="queued", pool=pool,
                                                       agent_id=None)
                await r.deliver(f"agent:{owner}", UnassignedFrame(conversation_id=conv.id))
                await r.deliver(f"visitor:{conv.visitor_id}", StateFrame(state="queued"))
                r._sent_position.pop(conv.id, None)
                r._visitor_of[conv.id] = conv.visitor_id
                await r.broadcast_positions(pool)
                await r._drain_pools_of(owner)
                return
        await r.deliver(f"agent:{by}", ErrorFrame(
            code="transfer_failed",
            message=f"nobody else in pool {pool!r} is online to take it; the chat stays with "
                    "its agent: pick another pool or agent"))

    # -- tickets -------------------------------------------------------------------------------
    async def route_tickets(self, pools: tuple[str, ...]) -> int:
        """An agent came online: offline conversations of their pools whose visitor is still
        connected are routed like any other (oldest first). Returns how many were."""
        r = self.router
        routed = 0
        now = r.clock()
        if not r.routing.is_open(now):
            return 0
        for conv in await self.storage.conversations.offline_in_pools(
                list(pools), limit=TICKETS_PER_ONLINE):
            if not await self.store.presence_nodes(f"visitor:{conv.visitor_id}", now):
                continue
            if await self.store.owner(conv.id) is not None:
                continue
            await r.route(conv.id, conv.visitor_id, conv.pool,
                          vip=await r._is_vip(conv.visitor_id), fallback=None)
            routed += 1
        return routed

    async def closed(self, conv_id: str) -> None:
        """A closed conversation's ticket (if it has one) is solved."""
        await self.storage.tickets.set_status(conv_id, "solved")

    # -- idle chats ----------------------------------------------------------------------------
    async def tick(self) -> None:
        """Each queue tick: the grace sweep; every few ticks the idle sweep."""
        self._ticks += 1
        await self.sweep_grace()
        if self._ticks % IDLE_SWEEP_EVERY_TICKS == 0:
            await self.sweep_idle()

    async def sweep_idle(self) -> int:
        """Close queued or assigned chats whose visitor left and that stayed quiet for
        ``idle_close_s`` (at most :data:`IDLE_SWEEP_BATCH` a run). Returns how many closed."""
        now = self.router.clock()
        closed = 0
        # A cursor walks past candidates that stay open (their visitor is still there), so a
        # full batch of those never hides an idle one behind it; it starts over at the end.
        batch = await self.storage.conversations.quiet(
            before=now - self.idle_close_s, after=self._idle_cursor, limit=IDLE_SWEEP_BATCH)
        self._idle_cursor = batch[-1].updated_at if len(batch) == IDLE_SWEEP_BATCH else 0.0
        for conv in batch:
            who = f"visitor:{conv.visitor_id}"
            present = bool(await self.store.presence_nodes(who, now))
            gone = await self.store.kv_get(f"visitor-gone:{conv.visitor_id}", now)
            last = max(conv.updated_at, await self._last_message_ts(conv.id))
            if not idle_close_due(conv.state, visitor_present=present, last_activity=last,
                                  gone_since=float(gone) if gone else None, now=now,
                                  idle_s=self.idle_close_s):
                continue
            if await self.idle_close(conv):
                closed += 1
        return closed

    async def _last_message_ts(self, conv_id: str) -> float:
        recent = await self.store.history(conv_id)
        if recent:
            return float(recent[-1].get("ts", 0.0))
        page = await self.storage.messages.page(conv_id, before_seq=2**53 - 1, limit=1,
                                                include_private=True)
        return page[-1].ts if page else 0.0

    async def idle_close(self, conv: Conversation) -> bool:
        """Close one idle chat: a system message (in the visitor's language) says why, the
        agent's slot is freed, the console gets it and ``closed``. Once, whichever router."""
        r = self.router
        now = r.clock()
        if not await self.store.kv_swap(f"idle-close:{conv.id}", None, "1", IDLE_LOCK_SECS, now):
            return False
        fresh = await self.storage.conversations.get(conv.id)
        if fresh is None or fresh.state not in ("queued", "assigned"):
            return False
        visitor = await self.storage.visitors.get(conv.visitor_id)
        body = text("idle_closed", visitor.locale if visitor else "en")
        seq = await self._system_seq(conv.id)
        await self.storage.messages.insert([{
            "conversation_id": conv.id, "seq": seq, "client_id": IDLE_CLOSE_CLIENT_ID,
            "sender_type": "system", "sender_id": "", "sender_name": "", "body": body,
            "private": False, "ts": now}])
        frame = MessageFrame(conversation_id=conv.id, seq=seq, id=IDLE_CLOSE_CLIENT_ID,
                             from_="system", body=body, ts=now)
        recipients = await self.store.message_fanout(conv.id, frame.to_dict(), None, now)
        owner = await self.store.release(conv.id)
        await self.store.dequeue(fresh.pool, conv.id)
        await self.storage.conversations.update(conv.id, state="closed")
        await self.storage.tickets.set_status(conv.id, "solved")
        await self.storage.audit.record("system", "conversation.idle_close", conv.id,
                                        {"idle_s": self.idle_close_s})
        r._forget(conv.id)
        await self.store.forget_closed(conv.id)  # bounded memory, as on_close (issue 17)
        await start_fanout(r.broker, recipients, frame, r.envelope_format)
        agent_id = owner or fresh.agent_id
        if agent_id:
            await r.deliver(f"agent:{agent_id}", ClosedFrame(conversation_id=conv.id))
            await r._drain_pools_of(agent_id)
        await r.broadcast_positions(fresh.pool)
        metrics.IDLE_CLOSED.inc()
        log.info("idle chat closed", extra={"conversation_id": conv.id, "agent": agent_id})
        return True

    async def _system_seq(self, conv_id: str) -> int:
        """A seq for a system message, from the conversation's counter (seeded from the
        database when the store lost it)."""
        store, now = self.store, self.router.clock()
        assigned = await store.assign_seq(conv_id, IDLE_CLOSE_CLIENT_ID, now)
        if assigned is None:
            floor = reseed_floor(await self.storage.messages.max_seq(conv_id),
                                 conversation_is_new=False)
            await store.seed_seq(conv_id, floor)
            assigned = await store.assign_seq(conv_id, IDLE_CLOSE_CLIENT_ID, now)
        if assigned is None:
            raise RuntimeError("the store lost the sequence counter again")
        return assigned[0]


"""The conversation rules of a chat node: who may see or write to a conversation, what hello
says, reopening a closed chat, and history reads.

:class:`Conversations` is held by :class:`~chatnode.service.ChatService` (``service.
conversations``); handlers reach it through the service. Every method raises
:class:`~chatnode.errors.ServiceError` for anything a client can get wrong.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from chatnode.access import may_read, site_allows
from chatnode.connections import VisitorSession
from chatnode.errors import ServiceError
from chatnode.queries import bounded_int
from tidedesk.auth import Principal
from tidedesk.connect_cache import ConnectCache, Presence
from tidedesk.frames import (
    AgentHelloFrame,
    AgentRef,
    HelloConversation,
    QueueFrame,
    ReadFrame,
    Sender,
    TypingFrame,
    VisitorAssignedFrame,
    VisitorHelloFrame,
    frame_dict,
    frame_dicts,
    visitor_summary,
)
from tidedesk.routing_rules import RoutingConfig
from tidedesk.site_directory import SiteDirectory
from tidedesk.storage import Storage
from tidedesk.storage.records import Rating
from tidedesk.store import Store


def as_dict(record: msgspec.Struct) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(record)
    return out

# Largest seq a client may name: the largest integer a JavaScript number holds exactly.
MAX_SEQ = 2**53
# A conversation's transcript may be mailed this many times (it goes to any address the
# visitor names: a bound keeps a stolen token from turning the shop into a mail cannon).
TRANSCRIPTS_PER_CONVERSATION = 3
EMAIL_RE = re.compile(r"^[^@\s<>,;]{1,64}@[^@\s<>,;]{1,189}\.[^@\s<>,;]{1,63}$")
# Messages per history page: the default, and the most one request may ask for.
HISTORY_PAGE = 100
HISTORY_PAGE_MAX = 500


T = TypeVar("T")


async def _beside(read: Awaitable[T], step: Awaitable[None] | None) -> T:
    """``read``'s result once ``step`` is done too, the two run concurrently (their store calls
    share a round trip); with no step, ``read`` alone, without gather's two tasks (a
    reconnect served from the connect cache has its presence already, issue 17 P1)."""
    if step is None:
        return await read
    result, _ = await asyncio.gather(read, step)
    return result


def relay_frame(data: dict[str, Any], conv_id: str, sender: Sender) -> dict[str, Any]:
    """The typing or read frame the peer receives (a frame ``tidedesk.wire`` checked): only
    the fields the protocol relays."""
    if data["type"] == "typing":
        return frame_dict(TypingFrame(on=data["on"], conversation_id=conv_id, from_=sender))
    return frame_dict(ReadFrame(seq=data["seq"], conversation_id=conv_id, from_=sender))


class Conversations:
    def __init__(self, *, store: Store, storage: Storage,
                 publish: Callable[[dict[str, Any]], Awaitable[None]],
                 routing: RoutingConfig | None = None,
                 clock: Callable[[], float] = time.time, mail_enabled: bool = False,
                 directory: SiteDirectory | None = None,
                 connect_cache: ConnectCache) -> None:
        self.store = store
        self.connect_cache = connect_cache
        self.directory = directory  # which pools each site has (agents see their sites)
        self.storage = storage
        self.publish = publish
        self.routing = routing
        self.clock = clock
        self.mail_enabled = mail_enabled

    async def site_pools(self, site: str) -> frozenset[str] | None:
        """A named site's pools (None: the default or an unknown site, limited by pools)."""
        return await self.directory.site_pools(site) if self.directory is not None else None

    # -- visitors ------------------------------------------------------------------------------
    async def open_visitor_session(self, visitor_id: str, *, create: bool = False,
                                   presence: Presence | None = None
                                   ) -> tuple[VisitorSession, bool]:
        """The visitor's open conversation, and whether it was created now (then the caller
        announces it with :meth:`announce_opened`). Without ``create`` (a socket connecting)
        a visitor with no open conversation gets a session in state ``new`` and none is made:
        the first message makes it (``create=True``), so opening the widget takes no agent
        slot. The visitor's session is the signed token plus this row: nothing else is kept
        for it. Both come from the connect cache: a reconnect reads no database (issue 17).
        ``presence`` is registered with the cache read when it hits (``session.present``)."""
        card = await self.connect_cache.card(visitor_id, presence)
        if card is None:
            raise ServiceError(401, "invalid_token", "unknown visitor; create a new one with "
                               "POST /api/v1/visitors")
        if not create or card.conversation is not None:
            found = card.conversation
            if found is None:
                return VisitorSession(visitor_id, None, "new", "", card.locale, card.name,
                                      card.tags, card.present), False
            return VisitorSession(visitor_id, found.id, found.state, found.pool, card.locale,
                                  card.name, card.tags, card.present), False
        conv, created = await self.storage.conversations.current_for_visitor(visitor_id,
                                                                              card.site)
        if created:
            await self.store.seed_seq(conv.id, 0)
        return VisitorSession(visitor_id, conv.id, conv.state, conv.pool, card.locale,
                              card.name, card.tags, card.present), created

    async def available(self, tags: tuple[str, ...]) -> bool | None:
        """Whether someone could answer the visitor now: an agent of their rule's pool (or its
        fallback) online or away, within business hours. None when this node has no routing
        rules to tell (then the widget learns it from the first message's routing)."""
        routing = self.routing
        if routing is None:
            return None
        if not routing.is_open(self.clock()):
            return False
        rule = routing.rule_for(tags)
        pools = [rule.pool] + ([rule.fallback] if rule.fallback else [])
        return await self.store.any_agent_in(pools, ("online", "away"))

    async def announce_opened(self, session: VisitorSession) -> None:
        """Ask the routers for an agent. Call after the visitor's presence is registered and
        hello is sent, so the routing answer can neither get lost nor overtake hello."""
        assert session.conversation_id is not None
        await self.publish({"kind": "opened", "conversation_id": session.conversation_id,
                            "visitor_id": session.visitor_id, "tags": list(session.tags)})

    async def queue_position(self, pool: str, conv_id: str) -> int | None:
        for position, (waiting_id, _) in enumerate(await self.store.waiting(pool), start=1):
            if waiting_id == conv_id:
                return position
        return None

    async def last_seq(self, conv_id: str) -> int:
        seq = await self.store.last_seq(conv_id)
        if seq is None:
            seq = await self.storage.messages.max_seq(conv_id)
        return seq

    async def visitor_hello(self, session: VisitorSession,
                            send: Callable[[dict[str, Any]], None],
                            ready: Awaitable[None] | None = None) -> bool:
        """Send hello, then the queue position or the agent; True if the chat is in a queue.
        Each frame is sent as soon as it is known, so hello goes out before any await that
        would let a routing answer overtake it. ``ready`` (the visitor's presence being
        registered) is awaited beside what hello reads, and hello goes out only after both:
        one store round trip less before hello (issue 17, P1)."""
        if session.conversation_id is None:
            available = await _beside(self.available(session.tags), ready)
            send(frame_dict(VisitorHelloFrame(
                visitor_id=session.visitor_id, conversation_id=None, last_seq=0, state="new",
                available=available, mail=self.mail_enabled)))
            return False
        last_seq = await _beside(self.last_seq(session.conversation_id), ready)
        send(frame_dict(VisitorHelloFrame(
            visitor_id=session.visitor_id, conversation_id=session.conversation_id,
            last_seq=last_seq, state=session.state, mail=self.mail_enabled)))
        if session.state == "queued":
            position = await self.queue_position(session.pool, session.conversation_id)
            if position is not None:
                send(frame_dict(QueueFrame(position=position)))
                return True
        elif session.state == "assigned":
            owner = await self.store.owner(session.conversation_id)
            if owner is not None:
                load = await self.store.agent_get(owner)
                send(frame_dict(VisitorAssignedFrame(
                    agent=AgentRef(id=owner, name=load.name if load else ""))))
        return False

    @staticmethod
    def check_visitor_names_own(session: VisitorSession, named: str | None) -> None:
        """A visitor's frame may name only the visitor's own conversation."""
        if named is not None and named != session.conversation_id:
            raise ServiceError(403, "forbidden", "you can only write to your own conversation")

    async def agent_of(self, conv_id: str) -> str | None:
        """The agent holding the conversation now, if any (the peer of typing and read)."""
        return await self.store.owner(conv_id)

    # -- agents --------------------------------------------------------------------------------
    async def agent_can_see(self, principal: Principal, conv_id: str) -> Any:
        """The conversation, if this agent owns it (or is a supervisor); else ServiceError 403."""
        conv = await self.storage.conversations.get(conv_id)
        if conv is None:
            raise ServiceError(404, "not_found", f"no conversation {conv_id!r}")
        if principal.is_supervisor or principal.kind == "api":
            return conv  # an API token reaches this only with scope conversations:read
        owner = await self.store.owner(conv_id)
        if owner != principal.id and conv.agent_id != principal.id:
            # A ticket (nobody could take it) is open to every agent of its pool (issue 13)
            # who sees its site (issue 16).
            if conv.state == "offline" and owner is None:
                agent = await self.storage.agents.get(principal.id)
                if agent is not None and conv.pool in agent.pool_list and site_allows(
                        principal.role, agent.pool_list, await self.site_pools(conv.site)):
                    return conv
            raise ServiceError(403, "forbidden", "this conversation is not assigned to you")
        return conv

    async def agent_may_read(self, principal: Principal, conv_id: str) -> Any:
        """Reading is wider than writing (issue 14): an agent also reads their pools' waiting
        chats and tickets (to pick one from the inbox) and their own closed ones."""
        try:
            return await self.agent_can_see(principal, conv_id)
        except ServiceError as exc:
            if exc.status != 403:
                raise
            conv = await self.storage.conversations.get(conv_id)
            agent = await self.storage.agents.get(principal.id)
            if conv is None or agent is None or not may_read(
                    principal.role, str(agent.id), agent.pool_list, conv.state, conv.pool,
                    conv.agent_id, await self.site_pools(conv.site)):
                raise
            return conv

    async def for_agent(self, principal: Principal, chats: dict[str, str],
                        conv_id: str) -> tuple[str, str]:
        """(visitor id, state) of a conversation this agent may act on; ServiceError if not.
        ``chats`` are the conversations the agent's console was given: one the store says the
        agent still owns needs no database read."""
        visitor_id = chats.get(conv_id)
        if visitor_id and await self.store.owner(conv_id) == principal.id:
            return visitor_id, "assigned"
        conv = await self.agent_can_see(principal, conv_id)
        return conv.visitor_id, conv.state

    @staticmethod
    def check_agent_may_write(kind: str, state: str) -> None:
        """Agents cannot write to closed chats (a private note is still allowed)."""
        if state == "closed" and kind == "message":
            raise ServiceError(409, "conversation_closed", "this conversation is closed")

    async def agent_hello(self, agent: Any) -> dict[str, Any]:
        convs = await self.storage.conversations.open_for_agent(str(agent.id))
        visitors = await self.storage.visitors.many([c.visitor_id for c in convs])
        items = [HelloConversation(
            conversation_id=conv.id, state=conv.state,
            visitor=visitor_summary(conv.visitor_id, visitors.get(conv.visitor_id)),
            last_seq=await self.last_seq(conv.id)) for conv in convs]
        return frame_dict(AgentHelloFrame(agent_id=str(agent.id), name=agent.name,
                                          role=agent.role, conversations=items))

    async def transfer(self, principal: Principal, conv_id: str, to_agent: Any,
                       to_pool: Any) -> None:
        event: dict[str, Any] = {"kind": "transfer", "conversation_id": conv_id,
                                 "by": principal.id}
        if to_agent is not None:
            event["to_agent"] = str(to_agent)
        else:
            event["to_pool"] = to_pool
        # Audited first: if the database is down nothing happens and the agent retries, so
        # no transfer goes unrecorded.
        await self.storage.audit.record(f"agent:{principal.id}", "conversation.transfer", conv_id,
                                 {k: event[k] for k in ("to_agent", "to_pool") if k in event})
        await self.publish(event)

    async def close(self, principal: Principal, conv_id: str) -> None:
        await self.publish({"kind": "close", "conversation_id": conv_id,
                            "by": f"agent:{principal.id}"})

    # -- rating and transcript (issue 13) ------------------------------------------------------
    async def rate(self, visitor_id: str, conv_id: str | None, score: int, comment: str,
                   now: float) -> Rating:
        """Store the visitor's rating of their closed conversation (once); ServiceError 409
        when it is still open or was rated already."""
        conv = await self.storage.conversations.get(conv_id) if conv_id else None
        if conv is None or conv.visitor_id != visitor_id:
            # An error frame, not a 403 (which would close a visitor's socket): a widget that
            # reconnected after the close may simply have no conversation any more.
            raise ServiceError(409, "nothing_to_rate", "there is no closed conversation to rate")
        if conv.state != "closed":
            raise ServiceError(409, "conversation_open", "a conversation can be rated once it "
                               "is closed")
        rating = await self.storage.ratings.add(conv_id=conv.id, visitor_id=visitor_id,
                                                agent_id=conv.agent_id, score=score,
                                                comment=comment.strip(), now=now)
        if rating is None:
            raise ServiceError(409, "already_rated", "this conversation has been rated "
                               "already; a conversation takes one rating")
        return rating

    async def rating(self, principal: Principal, conv_id: str) -> dict[str, Any]:
        """``{"rating": {...} | null}`` of a conversation the caller may see."""
        await self.agent_can_see(principal, conv_id)
        rating = await self.storage.ratings.get(conv_id)
        return {"rating": None if rating is None else as_dict(rating)}

    async def queue_transcript(self, principal: Principal, conv_id: str, body: dict[str, Any],
                               now: float) -> dict[str, Any]:
        """Queue the whole conversation as a mail to ``body["email"]`` (the visitor's own
        conversation only)."""
        conv = await self.storage.conversations.get(conv_id)
        if conv is None or conv.visitor_id != principal.id:
            raise ServiceError(403, "forbidden", "this is not your conversation")
        if not self.mail_enabled:
            raise ServiceError(409, "mail_disabled", "this server sends no e-mail (no "
                               "TIDEDESK_SMTP_URL); the transcript cannot be mailed")
        unknown = set(body) - {"email"}
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) "
                               f"{', '.join(sorted(unknown))}; allowed: email")
        address = body.get("email")
        if not isinstance(address, str) or not EMAIL_RE.match(address.strip()):
            raise ServiceError(400, "invalid_field", "'email' must be an e-mail address like "
                               "ann@example.com")
        if await self.storage.mail.transcripts_for(conv_id) >= TRANSCRIPTS_PER_CONVERSATION:
            raise ServiceError(429, "too_many_transcripts", f"at most "
                               f"{TRANSCRIPTS_PER_CONVERSATION} transcripts per conversation")
        await self.storage.mail.queue_transcript(conv_id, conv.visitor_id, address.strip(), now)
        return {"queued": True}

    # -- history -------------------------------------------------------------------------------
    async def history(self, principal: Principal, conv_id: str, *, after_seq: str | None,
                      before_seq: str | None, limit: str | None) -> list[dict[str, Any]]:
        """A page of a conversation's messages for a visitor (their own conversation, public
        messages only) or an agent who may see it (notes too). The query arguments come raw
        from the URL; ownership is checked before them."""
        if principal.kind == "visitor":
            conv = await self.storage.conversations.get(conv_id)
            if conv is None or conv.visitor_id != principal.id:
                raise ServiceError(403, "forbidden", "this is not your conversation")
        else:
            await self.agent_may_read(principal, conv_id)
        after = bounded_int("after_seq", after_seq, None, 0, MAX_SEQ)
        before = bounded_int("before_seq", before_seq, None, 1, MAX_SEQ)
        if after is not None and before is not None:
            raise ServiceError(400, "invalid_query", "give after_seq or before_seq, not both")
        page = bounded_int("limit", limit, HISTORY_PAGE, 1, HISTORY_PAGE_MAX) or HISTORY_PAGE
        return frame_dicts(await self.storage.messages.page(
            conv_id, after_seq=after, before_seq=before, limit=page,
            include_private=principal.kind in ("agent", "api")))

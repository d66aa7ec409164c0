"""What chat-node handlers call: visitors, agents, messages, resume. Handlers stay thin.

Every method raises :class:`ServiceError` (an HTTP status, a machine code and a message that
says what to change) for anything a client can get wrong. Sign-in, tokens, the second factor
and roles are :class:`~chatnode.accounts.Accounts` (``service.accounts``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from chatnode.accounts import Accounts
from chatnode.errors import ServiceError
from tidedesk.auth import Principal, TokenService
from tidedesk.broker import INBOUND_QUEUE, Broker, BrokerUnavailable
from tidedesk.delivery import deliver
from tidedesk.envelopes import (
    InboundEvent,
    MessageEvent,
    Sender,
    event_from_mapping,
    inbound_encoder,
)
from tidedesk.errors import Unavailable
from tidedesk.frames import frame_dict, frame_dicts, visitor_summary
from tidedesk.i18n import LOCALES
from tidedesk.resume import plan_resume, reseed_floor
from tidedesk.routing_rules import RoutingConfig
from tidedesk.settings import Settings
from tidedesk.storage import Storage
from tidedesk.store import Store

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^[a-z0-9_\-]{1,32}$")
MAX_TAGS = 20
PHONE_RE = re.compile(r"^\+?[0-9 ().\-]{3,32}$")


@dataclass
class VisitorSession:
    visitor_id: str
    conversation_id: str
    state: str
    pool: str
    locale: str
    name: str
    tags: tuple[str, ...]


class ChatService:
    def __init__(self, *, settings: Settings, broker: Broker, store: Store, storage: Storage,
                 tokens: TokenService, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.broker = broker
        self.store = store
        self.storage = storage
        self.tokens = tokens
        self.clock = clock
        self.node_id = settings.node_id
        self._encode = inbound_encoder(settings.envelope_format)
        self.accounts = Accounts(settings=settings, store=store, storage=storage, tokens=tokens,
                                 clock=clock, notify=self.relay)

    # -- authentication (chatnode/accounts.py) ------------------------------------------------
    def principal(self, token: str | None, expected: str) -> Principal:
        return self.accounts.principal(token, expected)

    async def agent_for(self, principal: Principal) -> Any:
        return await self.accounts.agent_for(principal)

    # -- visitors --------------------------------------------------------------------------------
    async def create_visitor(self, body: dict[str, Any]) -> dict[str, str]:
        allowed = {"name", "email", "phone", "tags", "locale"}
        unknown = set(body) - allowed
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) {', '.join(sorted(unknown))}"
                               f"; allowed: {', '.join(sorted(allowed))}")
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 120:
            raise ServiceError(400, "invalid_field", "'name' must be a string of at most 120 "
                               "characters")
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or len(email) > 254
                                  or "@" not in email):
            raise ServiceError(400, "invalid_field", "'email' must be an e-mail address")
        phone = body.get("phone")
        if phone is not None and (not isinstance(phone, str) or not PHONE_RE.match(phone)):
            raise ServiceError(400, "invalid_field", "'phone' must be a phone number: 3-32 of "
                               "digits, spaces and + ( ) . -")
        tags = body.get("tags", [])
        if (not isinstance(tags, list) or len(tags) > MAX_TAGS
                or not all(isinstance(t, str) and TAG_RE.match(t) for t in tags)):
            raise ServiceError(400, "invalid_field", f"'tags' must be a list of at most {MAX_TAGS}"
                               " tags of 1-32 characters a-z 0-9 _ -")
        locale = body.get("locale", "en")
        if locale not in LOCALES:
            raise ServiceError(400, "invalid_field", f"'locale' must be one of "
                               f"{', '.join(LOCALES)}")
        visitor_id = await self.storage.visitors.create(name=name.strip(), email=email,
                                                       phone=phone, tags=sorted(set(tags)),
                                                       locale=locale)
        return {"visitor_id": visitor_id, "token": self.tokens.visitor_token(visitor_id)}

    async def open_visitor_session(self, visitor_id: str) -> tuple[VisitorSession, bool]:
        """The visitor's open conversation, and whether it was created now (then the caller
        announces it with :meth:`announce_opened`). The visitor's session is the signed token
        plus this row: nothing else is kept for it."""
        visitor = await self.storage.visitors.get(visitor_id)
        if visitor is None:
            raise ServiceError(401, "invalid_token", "unknown visitor; create a new one with "
                               "POST /api/v1/visitors")
        conv, created = await self.storage.conversations.current_for_visitor(visitor_id)
        if created:
            await self.store.seed_seq(conv.id, 0)
        return VisitorSession(visitor_id, conv.id, conv.state, conv.pool, visitor.locale,
                              visitor.name, visitor.tag_list), created

    async def announce_opened(self, session: VisitorSession) -> None:
        """Ask the routers for an agent. Call after the visitor's presence is registered and
        hello is sent, so the routing answer can neither get lost nor overtake hello."""
        await self.publish({"kind": "opened", "conversation_id": session.conversation_id,
                            "visitor_id": session.visitor_id, "tags": list(session.tags)})

    async def queue_position(self, pool: str, conv_id: str) -> int | None:
        for position, (waiting_id, _) in enumerate(await self.store.waiting(pool), start=1):
            if waiting_id == conv_id:
                return position
        return None

    # -- messages ----------------------------------------------------------------------------
    async def publish(self, event: InboundEvent | dict[str, Any]) -> None:
        """Hand an event to the routers (binary envelope, ``tidedesk.envelopes``); a mapping
        is checked against the schema first."""
        if isinstance(event, dict):
            event = event_from_mapping(event)
        await self.broker.publish(INBOUND_QUEUE, self._encode(event))

    async def last_seq(self, conv_id: str) -> int:
        seq = await self.store.last_seq(conv_id)
        if seq is None:
            seq = await self.storage.messages.max_seq(conv_id)
        return seq

    async def assign_seq(self, conv_id: str, client_id: str) -> int:
        """The message's seq (the same one again for a repeated client id), re-seeding the
        counter from the database when the store lost it."""
        now = self.clock()
        assigned = await self.store.assign_seq(conv_id, client_id, now)
        if assigned is None:
            floor = reseed_floor(await self.storage.messages.max_seq(conv_id),
                                 conversation_is_new=False)
            await self.store.seed_seq(conv_id, floor)
            assigned = await self.store.assign_seq(conv_id, client_id, now)
            if assigned is None:
                raise BrokerUnavailable("the session store lost the sequence counter; retry")
        return assigned[0]

    async def publish_message(self, *, conv_id: str, seq: int, visitor_id: str, client_id: str,
                              body: str, sender_type: str, sender_id: str, name: str,
                              private: bool = False) -> None:
        """Hand the message to the routers; returns once it is durable. Raises
        :class:`BrokerUnavailable` otherwise: the client must send it again with the same id
        (it will get the same seq, and the router stores it once)."""
        log.debug("message ingested", extra={"seq": seq, "client_id": client_id})
        await self.publish(MessageEvent(
            conversation_id=conv_id, visitor_id=visitor_id, seq=seq, id=client_id,
            from_=cast(Sender, sender_type), sender_id=sender_id, name=name, body=body,
            ts=self.clock(), private=private))

    async def resume(self, conv_id: str, after_seq: int, *,
                     include_private: bool) -> list[dict[str, Any]]:
        plan = plan_resume(after_seq, await self.store.history(conv_id),
                           include_private=include_private)
        if not plan.from_database:
            return list(plan.messages)
        return frame_dicts(await self.storage.messages.page(
            conv_id, after_seq=after_seq, limit=500, include_private=include_private))

    async def relay(self, who: str, frame: dict[str, Any]) -> None:
        """Best-effort ephemeral frames (typing, read): straight to the peer's nodes."""
        try:
            await deliver(self.broker, self.store, who, frame, self.clock(),
                          self.settings.envelope_format)
        except Unavailable:
            log.info("ephemeral frame dropped: broker unavailable", extra={"to": who})

    # -- agents ------------------------------------------------------------------------------
    async def agent_can_see(self, principal: Principal, conv_id: str) -> Any:
        """The conversation, if this agent owns it (or is a supervisor); else ServiceError 403."""
        conv = await self.storage.conversations.get(conv_id)
        if conv is None:
            raise ServiceError(404, "not_found", f"no conversation {conv_id!r}")
        if principal.is_supervisor:
            return conv
        owner = await self.store.owner(conv_id)
        if owner != principal.id and conv.agent_id != principal.id:
            raise ServiceError(403, "forbidden", "this conversation is not assigned to you")
        return conv

    async def agent_status(self, agent: Any, status: str) -> None:
        await self.publish({"kind": "agent_status", "agent_id": str(agent.id), "status": status,
                            "pools": list(agent.pool_list), "max_chats": agent.max_chats,
                            "name": agent.name})

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

    async def agent_hello(self, agent: Any) -> dict[str, Any]:
        convs = await self.storage.conversations.open_for_agent(str(agent.id))
        visitors = await self.storage.visitors.many([c.visitor_id for c in convs])
        items = []
        for conv in convs:
            items.append({
                "conversation_id": conv.id, "state": conv.state,
                "visitor": frame_dict(visitor_summary(conv.visitor_id,
                                                      visitors.get(conv.visitor_id))),
                "last_seq": await self.last_seq(conv.id),
            })
        return {"type": "hello", "agent_id": str(agent.id), "name": agent.name,
                "role": agent.role, "conversations": items}

    async def agents_overview(self) -> list[dict[str, Any]]:
        out = []
        for agent in await self.storage.agents.all():
            load = await self.store.agent_get(str(agent.id))
            out.append({"id": str(agent.id), "name": agent.name, "role": agent.role,
                        "status": load.status if load else "offline",
                        "open_chats": load.open_chats if load else 0,
                        "max_chats": agent.max_chats, "pools": list(agent.pool_list)})
        return out

    async def queues_overview(self, routing: RoutingConfig) -> dict[str, list[dict[str, Any]]]:
        now = self.clock()
        out: dict[str, list[dict[str, Any]]] = {}
        for pool in routing.pools:
            waiting = await self.store.waiting(pool)
            convs = {c.id: c for c in
                     await self.storage.conversations.many([c for c, _ in waiting])}
            visitors = await self.storage.visitors.many([c.visitor_id for c in convs.values()])
            items = []
            for conv_id, enqueued_at in waiting:
                conv = convs.get(conv_id)
                visitor = visitors.get(conv.visitor_id) if conv else None
                items.append({"conversation_id": conv_id,
                              "visitor_name": visitor.name if visitor else "",
                              "vip": routing.is_vip(visitor.tag_list if visitor else ()),
                              "waiting_s": round(max(0.0, now - enqueued_at), 1)})
            out[pool] = items
        return out

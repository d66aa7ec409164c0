"""What chat-node handlers call: visitors, agents, messages, resume, and what a WebSocket
frame does. Handlers stay thin: they parse, check the access table, call one method here and
send what it returns (or what it sends through the :class:`~chatnode.connections.Peer`).

Every method raises :class:`ServiceError` (an HTTP status, a machine code and a message that
says what to change) for anything a client can get wrong. Sign-in, tokens, the second factor
and roles are :class:`~chatnode.accounts.Accounts` (``service.accounts``); the conversation
rules (ownership, hello, history) are :class:`~chatnode.conversations.Conversations`
(``service.conversations``). Per-connection state is a
:class:`~chatnode.connections.ConnectionState` the handler hands in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from chatnode import contacts
from chatnode.accounts import Accounts
from chatnode.assignments import Assignments
from chatnode.attachments import AttachmentService
from chatnode.canned import CannedResponses
from chatnode.connections import ConnectionState, Peer, VisitorSession
from chatnode.conversations import MAX_SEQ, Conversations, relay_frame
from chatnode.errors import ServiceError
from chatnode.inbox import Inbox
from chatnode.integrations import Integrations
from chatnode.privacy import Privacy
from chatnode.queries import audit_action, bounded_int
from chatnode.site_admin import SiteAdmin
from tidedesk import events, logs, metrics, wire
from tidedesk.auth import Principal, TokenService
from tidedesk.blobs import BlobStore, open_blobs
from tidedesk.broker import INBOUND_QUEUE, Broker, BrokerUnavailable
from tidedesk.connect_cache import ConnectCache, Presence
from tidedesk.delivery import deliver
from tidedesk.envelopes import (
    InboundEvent,
    MessageEvent,
    event_from_mapping,
    inbound_encoder,
)
from tidedesk.errors import Unavailable
from tidedesk.frames import (
    AckFrame,
    AttachmentMeta,
    PongFrame,
    RatedFrame,
    Sender,
    frame_dict,
    frame_dicts,
)
from tidedesk.i18n import LOCALES
from tidedesk.mail.links import LINK_CODE_RE, LINK_REFUSALS
from tidedesk.ratelimit import RateLimiter
from tidedesk.resume import plan_resume, reseed_floor
from tidedesk.routing_rules import DEFAULT_RULES, RoutingConfig, parse_rules
from tidedesk.settings import Settings
from tidedesk.site_directory import SiteDirectory
from tidedesk.storage import Storage
from tidedesk.storage.records import as_dicts
from tidedesk.store import CHECK_DATABASE, Store
from tidedesk.webhooks import WebhookOutbox

log = logging.getLogger(__name__)
# Bound once: .labels() is a lock and a dict lookup per message (issue 17).
_MESSAGES_IN = {role: metrics.MESSAGES_IN.labels(role=role)
                for role in ("visitor", "agent", "system")}

TAG_RE = re.compile(r"^[a-z0-9_\-]{1,32}$")
MAX_TAGS = 20
PHONE_RE = re.compile(r"^\+?[0-9 ().\-]{3,32}$")
# Audit entries per page: the default, and the most one request may ask for.
AUDIT_PAGE = 100
AUDIT_PAGE_MAX = 500
# Ratings the supervisor view lists (newest first), beside the average of all.
RECENT_RATINGS = 10
PONG_FRAME: dict[str, Any] = frame_dict(PongFrame())
# A visitor's connection holds live messages back this long at most while it waits for the
# client's first frame (normally its resume): see ConnectionState.joining.
JOIN_HOLD_SECS = 1.0


@dataclass(frozen=True)
class PendingMessage:
    """A message whose seq is taken: :meth:`ChatService.publish_message` makes it durable."""

    conv_id: str
    seq: int
    client_id: str
    body: str
    visitor_id: str
    sender_type: str
    sender_id: str
    name: str
    private: bool = False
    attachments: tuple[AttachmentMeta, ...] = ()


class ChatService:
    def __init__(self, *, settings: Settings, broker: Broker, store: Store, storage: Storage,
                 tokens: TokenService, clock: Callable[[], float] = time.time,
                 outbox: WebhookOutbox | None = None,
                 routing: RoutingConfig | None = None,
                 blobs: BlobStore | None = None) -> None:
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
        # One site directory (settings cached per node) for routing, access and the admin.
        directory = SiteDirectory(storage, routing or parse_rules(DEFAULT_RULES))
        self.conversations = Conversations(store=store, storage=storage, publish=self.publish,
                                           routing=routing, clock=clock,
                                           mail_enabled=settings.mail_enabled,
                                           directory=directory,
                                           connect_cache=ConnectCache(store, storage,
                                                                      clock=clock))
        self.assignments = Assignments(store=store, storage=storage, broker=broker,
                                       publish=self.publish, routing=routing,
                                       envelope_format=settings.envelope_format, clock=clock,
                                       directory=directory)
        if blobs is None:
            blobs = open_blobs(settings.attachments_url, data_dir=settings.data_dir,
                               database=storage.database,
                               cipher=storage.cipher if settings.encrypt_message_bodies
                               else None)
        self.attachments = AttachmentService(settings=settings, storage=storage, blobs=blobs,
                                             can_see=self.conversations.agent_can_see,
                                             clock=clock)
        self.privacy = Privacy(storage=storage, store=store, clock=clock)
        # Erasure removes the contact's files too (issue 15's rows and bytes).
        self.privacy.add_step("attachments",
                              lambda subject: self.attachments.delete_for_visitor(
                                  subject.visitor_id))
        self.outbox = outbox or WebhookOutbox(storage)
        self.integrations = Integrations(settings=settings, storage=storage,
                                         outbox=self.outbox, clock=clock)
        self.canned = CannedResponses(storage)
        self.sites = SiteAdmin(storage=storage, directory=directory, clock=clock)
        # issue 14: views, labels, contacts, search
        self.inbox = Inbox(storage=storage, directory=directory)

    # -- authentication (chatnode/accounts.py) ------------------------------------------------
    def principal(self, token: str | None, expected: str) -> Principal:
        return self.accounts.principal(token, expected)

    async def agent_for(self, principal: Principal) -> Any:
        return await self.accounts.agent_for(principal)

    # -- visitors --------------------------------------------------------------------------------
    async def create_visitor(self, body: dict[str, Any]) -> dict[str, str]:
        allowed = {"name", "email", "phone", "tags", "locale", "site", "context", "fields",
                   "customer_id", "customer_hash"}
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
        site = body.get("site", "default")
        if not isinstance(site, str):
            raise ServiceError(400, "invalid_field", "'site' must be a site name")
        if site != "default":  # the default site needs no lookup on this hot path
            site = await self.sites.check_known(site)
        context = contacts.visitor_context(body.get("context"))
        fields = contacts.prechat_fields(body.get("fields"))
        customer = contacts.verified_customer(self.settings.identity_secret,
                                              body.get("customer_id"),
                                              body.get("customer_hash"))
        if customer is not None:
            known = await self.storage.visitors.by_external_id(customer)
            if known is not None:  # the same contact on this device too
                if context:
                    await self.storage.visitors.set_context(known.id, context)
                return {"visitor_id": known.id, "token": self.tokens.visitor_token(known.id)}
        visitor_id = await self.storage.visitors.create(name=name.strip(), email=email,
                                                       phone=phone, tags=sorted(set(tags)),
                                                       locale=locale, site=site, context=context,
                                                       fields=fields, external_id=customer)
        return {"visitor_id": visitor_id, "token": self.tokens.visitor_token(visitor_id)}

    async def redeem_mail_link(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/visitors/mail-link``: a reply mail's one-time code (its link's
        ``#tidedesk-code=``) for the session of the visitor it was mailed to, once, within
        ``LINK_CODE_TTL_SECS``. A spent, expired or unknown code is 410 with why and what to
        do instead (the widget starts a new chat and says so)."""
        code = body.get("code")
        if set(body) != {"code"} or not isinstance(code, str):
            raise ServiceError(400, "invalid_body", 'send {"code": "<the code from the mail\'s '
                               'link, after #tidedesk-code=>"}')
        if not LINK_CODE_RE.fullmatch(code):
            raise ServiceError(400, "invalid_field", "'code' must be 20-64 characters of "
                               "A-Z a-z 0-9 _ - (copy the whole link from the mail)")
        opened = await self.storage.mail_links.redeem(code, self.clock())
        if isinstance(opened, str) or await self.storage.visitors.get(
                opened.visitor_id) is None:
            refused = opened if isinstance(opened, str) else "link_unknown"
            raise ServiceError(410, refused, LINK_REFUSALS[refused])
        return {"visitor_id": opened.visitor_id, "conversation_id": opened.conversation_id,
                "token": self.tokens.visitor_token(opened.visitor_id)}

    async def visitor_contact(self, principal: Principal,
                              body: dict[str, Any]) -> dict[str, Any]:
        """The contact details a visitor leaves (the offline form): stored in the visitor's
        encrypted fields, never in a message (issue 13)."""
        allowed = {"name", "email", "phone"}
        unknown = set(body) - allowed
        if unknown or not body:
            raise ServiceError(400, "invalid_body", "send any of name, email, phone"
                               + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
        name, email, phone = body.get("name"), body.get("email"), body.get("phone")
        if name is not None and (not isinstance(name, str) or len(name) > 120):
            raise ServiceError(400, "invalid_field", "'name' must be a string of at most 120 "
                               "characters")
        if email is not None and (not isinstance(email, str) or len(email) > 254
                                  or "@" not in email):
            raise ServiceError(400, "invalid_field", "'email' must be an e-mail address")
        if phone is not None and (not isinstance(phone, str) or not PHONE_RE.match(phone)):
            raise ServiceError(400, "invalid_field", "'phone' must be a phone number: 3-32 of "
                               "digits, spaces and + ( ) . -")
        saved = await self.storage.visitors.update_contact(
            principal.id, name=name.strip() if isinstance(name, str) else None, email=email,
            phone=phone)
        if not saved:
            raise ServiceError(401, "invalid_token", "unknown visitor; create a new one with "
                               "POST /api/v1/visitors")
        return {"saved": sorted(k for k in allowed if body.get(k) is not None)}

    # -- tickets -------------------------------------------------------------------------------
    async def tickets(self, principal: Principal, *, status: str | None, limit: str | None,
                      before_id: str | None) -> dict[str, Any]:
        """Tickets (conversations nobody could take) of the caller's pools, newest first;
        supervisors and admins see every pool. ``status``: open, pending, solved or all
        (default open and pending)."""
        choices = {None: ("open", "pending"), "open": ("open",), "pending": ("pending",),
                   "solved": ("solved",), "all": ("open", "pending", "solved")}
        if status not in choices:
            raise ServiceError(400, "invalid_query", "'status' must be open, pending, solved "
                               "or all")
        page = bounded_int("limit", limit, 50, 1, AUDIT_PAGE_MAX) or 50
        agent = await self.agent_for(principal)
        rows = await self.storage.tickets.listing(
            statuses=choices[status], pools=None if principal.is_supervisor else agent.pool_list,
            limit=page, before_id=bounded_int("before_id", before_id, None, 1, 2**53 - 1))
        visitors = await self.storage.visitors.many([t.visitor_id for t in rows])
        out = []
        for t in rows:
            v = visitors.get(t.visitor_id)
            out.append({"id": t.id, "conversation_id": t.conversation_id, "status": t.status,
                        "assignee_id": t.assignee_id, "state": t.state, "pool": t.pool,
                        "visitor": {"id": t.visitor_id, "name": v.name if v else "",
                                    "email": v.email if v else None},
                        "created_at": t.created_at, "updated_at": t.updated_at})
        return {"tickets": out,
                "next_before_id": rows[-1].id if len(rows) == page else None}

    # -- messages ----------------------------------------------------------------------------
    async def publish(self, event: InboundEvent | dict[str, Any]) -> None:
        """Hand an event to the routers (binary envelope, ``tidedesk.envelopes``); a mapping
        is checked against the schema first."""
        if isinstance(event, dict):
            event = event_from_mapping(event)
        await self.broker.publish(INBOUND_QUEUE, self._encode(event))

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
        if assigned == CHECK_DATABASE:
            # The store's bounded memory may have forgotten this id: the unique key answers
            # (a late resend gets its original seq; the router stores it once either way).
            stored = await self.storage.messages.seq_of(conv_id, client_id)
            if stored is not None:
                return stored
            assigned = await self.store.assign_seq(conv_id, client_id, now, checked=True)
            if assigned is None or assigned == CHECK_DATABASE:
                raise BrokerUnavailable("the session store lost the sequence counter; retry")
        return assigned[0]

    async def take_seq(self, conv_id: str, frame: wire.Frame, *, visitor_id: str,
                       sender_type: str, sender_id: str, name: str,
                       private: bool = False) -> PendingMessage:
        """The message frame with its seq taken, in frame order (a socket hands us one frame
        at a time); publishing it may then run concurrently, so a client can pipeline."""
        client_id = frame.data["id"]
        # Files are tied to the message before it takes a seq: a refused file costs no seq,
        # and a resend with the same client id finds them tied to it already.
        files = frame.data.get("attachments")
        attachments = await self.attachments.attach(
            files, uploader=f"{sender_type}:{sender_id}", conversation_id=conv_id,
            message_id=client_id, visitor_id=visitor_id, private=private) if files else ()
        return PendingMessage(conv_id=conv_id, seq=await self.assign_seq(conv_id, client_id),
                              client_id=client_id, body=frame.data["body"],
                              visitor_id=visitor_id, sender_type=sender_type,
                              sender_id=sender_id, name=name, private=private,
                              attachments=attachments)

    async def publish_message(self, msg: PendingMessage) -> dict[str, Any]:
        """Hand the message to the routers; returns the ack frame once it is durable. Raises
        :class:`BrokerUnavailable` otherwise: the client must send it again with the same id
        (it will get the same seq, and the router stores it once)."""
        log.debug("message ingested", extra={"seq": msg.seq, "client_id": msg.client_id})
        await self.publish(MessageEvent(
            conversation_id=msg.conv_id, visitor_id=msg.visitor_id, seq=msg.seq,
            id=msg.client_id, from_=cast(Sender, msg.sender_type), sender_id=msg.sender_id,
            name=msg.name, body=msg.body, ts=self.clock(), private=msg.private,
            attachments=msg.attachments))
        role = msg.sender_type
        (_MESSAGES_IN.get(role) or metrics.MESSAGES_IN.labels(role=role)).inc()
        return frame_dict(AckFrame(id=msg.client_id, seq=msg.seq))

    async def post_message(self, principal: Principal, conv_id: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/conversations/{id}/messages``: the WebSocket ``message`` (or, with
        ``private``, ``note``) over REST, on the same durable path (seq taken, published,
        answered once durable) and idempotent on ``id`` the same way. An agent must own the
        conversation (or be a supervisor); an API token needs scope ``messages:write`` (the
        route's rule) and writes as its name."""
        allowed = {"id", "body", "private"}
        unknown = set(body) - allowed
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) {', '.join(sorted(unknown))}"
                               f"; allowed: {', '.join(sorted(allowed))}")
        private = body.get("private", False)
        if not isinstance(private, bool):
            raise ServiceError(400, "invalid_field", "'private' must be true or false")
        kind = "note" if private else "message"
        try:
            frame = wire.parse_frame(json.dumps({
                "type": kind, "conversation_id": conv_id, "id": body.get("id"),
                "body": body.get("body")}), role="agent",
                max_body_chars=self.settings.max_body_chars)
        except wire.FrameError as exc:
            raise ServiceError(400, exc.code, exc.message) from None
        if principal.kind == "agent":
            visitor_id, state = await self.conversations.for_agent(principal, {}, conv_id)
            name, sender_id = (await self.agent_for(principal)).name, principal.id
        else:
            conv = await self.storage.conversations.get(conv_id)
            if conv is None:
                raise ServiceError(404, "not_found", f"no conversation {conv_id!r}")
            visitor_id, state = conv.visitor_id, conv.state
            name, sender_id = principal.name, f"api:{principal.id}"[:32]
        self.conversations.check_agent_may_write(kind, state)
        pending = await self.take_seq(conv_id, frame, visitor_id=visitor_id, sender_type="agent",
                                      sender_id=sender_id, name=name, private=private)
        ack = await self.publish_message(pending)
        return {"id": ack["id"], "seq": ack["seq"]}

    async def handoff(self, principal: Principal, conv_id: str,
                      body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/conversations/{id}/handoff`` ``{"pool"?}``: a bot gives the chat to
        people (its own pool unless it names one); 409 when no bot holds the chat."""
        unknown = set(body) - {"pool"}
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) "
                               f"{', '.join(sorted(unknown))}; allowed: pool")
        pool = body.get("pool")
        if pool is not None and (not isinstance(pool, str) or not TAG_RE.match(pool)):
            raise ServiceError(400, "invalid_field", "'pool' must be a pool name")
        if await self.storage.conversations.get(conv_id) is None:
            raise ServiceError(404, "not_found", f"no conversation {conv_id!r}")
        if await self.store.kv_get(f"bot:{conv_id}", self.clock()) is None:
            raise ServiceError(409, "not_with_a_bot", "no bot holds this conversation (it "
                               "was handed off already, or its site has no bot)")
        await self.publish({"kind": "transfer", "conversation_id": conv_id,
                            "by": principal.actor, "to_pool": pool or "*"})
        return {"id": conv_id, "handed_off": True}

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
    async def agent_status(self, agent: Any, status: str, *, give_back: bool = False) -> None:
        """Tell the routers an agent's status. ``give_back``: the agent signed out or chose
        ``offline``, so their open chats go to others at once (issue 13)."""
        await self.publish({"kind": "agent_status", "agent_id": str(agent.id), "status": status,
                            "pools": list(agent.pool_list), "max_chats": agent.max_chats,
                            "name": agent.name, "give_back": give_back})

    async def update_agent(self, principal: Principal, agent_id: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        """``PUT /api/v1/agents/{id}`` (:meth:`Accounts.update_agent`); a deactivated agent
        goes offline at the routers at once and gives their open chats back, as signing out
        does (issue 13)."""
        agent = await self.accounts.update_agent(principal, agent_id, body)
        if not agent["active"]:
            record = await self.storage.agents.get(agent["id"])
            if record is not None:
                await self.agent_status(record, "offline", give_back=True)
        return agent

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

    async def supervisor_overview(self, routing: RoutingConfig) -> dict[str, Any]:
        agents = await self.agents_overview()
        queues = await self.queues_overview(routing)
        average, count, recent = await self.storage.ratings.recent(RECENT_RATINGS)
        return {
            "agents": agents, "queues": queues,
            "ratings": {"average": average, "count": count, "recent": as_dicts(recent)},
            "counts": {"online_agents": sum(a["status"] == "online" for a in agents),
                       "open_conversations": sum(a["open_chats"] for a in agents),
                       "waiting": sum(len(q) for q in queues.values())},
        }

    # -- reads for the console -----------------------------------------------------------------
    async def audit_log(self, *, limit: str | None, before_id: str | None,
                        action: str | None) -> list[dict[str, Any]]:
        """A page of the audit log, newest first; the query arguments come raw from the URL."""
        return as_dicts(await self.storage.audit.entries(
            limit=bounded_int("limit", limit, AUDIT_PAGE, 1, AUDIT_PAGE_MAX) or AUDIT_PAGE,
            before_id=bounded_int("before_id", before_id, None, 1, MAX_SEQ),
            action=audit_action(action)))

    # -- rate limits ---------------------------------------------------------------------------
    async def limit(self, scope: str, key: str, per_min: int, *, what: str) -> None:
        """Count one ``what`` ("requests", "connections") against the per-minute limit of a
        client address (scope ``ip``) or a principal (``token``); ServiceError 429 when over."""
        wait = await RateLimiter(self.store, self.clock).hit(scope, key, per_min)
        if wait is None:
            return
        if what == "connections":
            message = f"too many connections; connect again in {wait} s"
        else:
            message = (f"too many requests from this {'address' if scope == 'ip' else 'token'}"
                       f"; wait {wait} s")
        raise ServiceError(429, "rate_limited", message, retry_after=wait)

    async def _limit_connection(self, ip: str, who: str) -> None:
        s = self.settings
        await self.limit("ip", ip, s.rate_limit_ip_per_min, what="connections")
        await self.limit("token", who, s.rate_limit_token_per_min, what="connections")

    # -- WebSocket connections -----------------------------------------------------------------
    async def connect_visitor(self, conn: ConnectionState, token: str | None, ip: str) -> bool:
        """Authenticate a visitor's socket and fill ``conn`` (who, principal, session); True if
        the conversation was created now. ServiceError 401 or 429, or Unavailable."""
        principal = self.principal(token, "visitor")
        who = f"visitor:{principal.id}"
        await self._limit_connection(ip, who)
        conn.session, created = await self.conversations.open_visitor_session(
            principal.id, presence=Presence(who, conn.conn_id, self.node_id,
                                            self.settings.presence_ttl_s))
        conn.principal, conn.who = principal, who
        # Live messages wait until the client resumed (or sent anything else, or
        # JOIN_HOLD_SECS passed): a reconnecting widget resumes right after hello.
        conn.joining = True
        return created

    async def visitor_joined(self, conn: ConnectionState, created: bool, peer: Peer) -> None:
        """Call once the socket is in the Hub: presence, hello, then ask for an agent."""
        session = conn.session
        assert session is not None
        said: list[Any] = []

        def send(frame: dict[str, Any]) -> None:
            if frame.get("type") == "hello":
                said.append(frame.get("last_seq"))
            peer.send(frame)

        try:
            # presence is registered before hello goes out, beside what hello reads
            waiting = await self.conversations.visitor_hello(
                session, send, ready=None if session.present else self._present(conn))
        finally:
            # Tornado reads no frame before open() returns, so nothing else ends the join
            # meanwhile. Nothing to recover (a client resumes only above 0): it ends now;
            # else at the first frame or after JOIN_HOLD_SECS, the timer armed only then (a
            # new visitor's connect needs none; issue 17, P1).
            if said and not said[0]:
                self.end_join(conn, peer)
            elif conn.joining:
                asyncio.get_running_loop().call_later(JOIN_HOLD_SECS, self.end_join, conn,
                                                      peer)
        if created and session.conversation_id is not None:
            await self._conversation_created(session)
        # A queued chat that is in no queue was never announced (say the broker was down when
        # it was created): announcing is idempotent, so ask again. An offline one (a ticket) is
        # routed again now that its visitor is back, in case an agent came online meanwhile.
        if session.conversation_id is not None and (
                created or session.state == "offline"
                or (session.state == "queued" and not waiting)):
            await self._announce(session, peer)

    async def visitor_frame(self, conn: ConnectionState, frame: wire.Frame,
                            peer: Peer) -> PendingMessage | None:
        """What a visitor's frame does; a message comes back with its seq, to publish."""
        session = conn.session
        assert session is not None
        logs.bind(conversation_id=session.conversation_id)  # this frame's task and its spawn
        self.conversations.check_visitor_names_own(session, frame.conversation_id)
        if frame.type != "resume":
            self.end_join(conn, peer)
        if frame.type == "message":
            # (Another tab's first message may have opened one: its state frames reach this
            # socket too, so the conversation id is what tells.)
            if session.conversation_id is None or session.state in ("new", "closed"):
                # The first message opens the conversation (issue 13); after the agent closed
                # the chat, writing again starts a new one. hello goes out first, so the
                # widget knows the conversation before the ack and the routing answer.
                conn.session, created = await self.conversations.open_visitor_session(
                    session.visitor_id, create=True)
                session = conn.session
                logs.bind(conversation_id=session.conversation_id)
                await self.conversations.visitor_hello(session, peer.send)
                if created:
                    await self._conversation_created(session)
                    await self._announce(session, peer)
            assert session.conversation_id is not None
            if session.state == "offline":  # the visitor wrote last: the ticket is open
                await self.storage.tickets.set_status(session.conversation_id, "open")
            return await self.take_seq(session.conversation_id, frame,
                                       visitor_id=session.visitor_id, sender_type="visitor",
                                       sender_id=session.visitor_id, name=session.name)
        if session.conversation_id is None:  # nothing to resume, nobody to tell
            if frame.type == "ping":
                peer.send(PONG_FRAME.copy())
            return None
        if frame.type == "resume":
            await self._resume(session.conversation_id, frame.data["after_seq"], False, peer,
                               conn)
        elif frame.type in ("typing", "read"):
            owner = await self.conversations.agent_of(session.conversation_id)
            if owner is not None:
                await self.relay(f"agent:{owner}",
                                 relay_frame(frame.data, session.conversation_id, "visitor"))
        elif frame.type == "ping":
            peer.send(PONG_FRAME.copy())
        elif frame.type == "rating":
            await self.rate(session, frame.data, peer)
        return None

    async def rate(self, session: VisitorSession, data: dict[str, Any], peer: Peer) -> None:
        """issue 13: the visitor rates their closed conversation; the visitor gets ``rated``
        back, and so does the agent who had the chat."""
        rating = await self.conversations.rate(session.visitor_id, session.conversation_id,
                                               data["score"], data.get("comment", ""),
                                               self.clock())
        frame = RatedFrame(conversation_id=rating.conversation_id, score=rating.score,
                           comment=rating.comment)
        peer.send(frame_dict(frame))
        if rating.agent_id:
            await self.relay(f"agent:{rating.agent_id}", frame_dict(frame))
        try:  # the webhook event (issue 16); the rating itself is stored already
            await self.outbox.emit(events.RATING_CREATED, events.rating_data(
                conversation_id=rating.conversation_id, score=rating.score,
                comment=rating.comment))
        except Unavailable:
            log.warning("rating.created not emitted: database unavailable",
                        extra={"conversation_id": rating.conversation_id})

    async def post_mail_reply(self, conv_id: str, visitor_id: str, client_id: str,
                              body: str) -> None:
        """issue 13: a visitor's e-mail reply (``tidedesk.mail.poller``) as a visitor message,
        through the same durable path as the widget's: a seq, then the broker's confirm.
        Idempotent on ``client_id``. An answer to a closed conversation reopens it: it is
        routed again (to an agent, the queue, or the tickets), so a person sees it."""
        conv = await self.storage.conversations.get(conv_id)
        seq = await self.assign_seq(conv_id, client_id)
        await self.publish_message(PendingMessage(
            conv_id=conv_id, seq=seq, client_id=client_id, body=body, visitor_id=visitor_id,
            sender_type="visitor", sender_id=visitor_id, name=""))
        if conv is not None and conv.state == "closed":
            visitor = await self.storage.visitors.get(visitor_id)
            await self.publish({"kind": "opened", "conversation_id": conv_id,
                                "visitor_id": visitor_id,
                                "tags": list(visitor.tag_list) if visitor else []})

    async def connect_agent(self, conn: ConnectionState, token: str | None, ip: str) -> None:
        """Authenticate an agent's socket, fill ``conn`` and announce the agent online.
        ServiceError 401 or 429, or Unavailable."""
        principal = self.principal(token, "access")
        await self.accounts.check_live(principal)
        who = f"agent:{principal.id}"
        await self._limit_connection(ip, who)
        conn.agent = await self.agent_for(principal)
        await self.agent_status(conn.agent, "online")
        conn.principal, conn.who = principal, who

    async def agent_joined(self, conn: ConnectionState, peer: Peer) -> None:
        """Call once the socket is in the Hub: presence, then hello. ServiceError if the
        sign-in ended meanwhile."""
        assert conn.principal is not None
        await self._present(conn)
        # Once more now that the socket is registered: a sign-out or role change while we were
        # connecting sent its notice before this socket could receive it.
        await self.accounts.check_live(conn.principal)
        peer.send(await self.conversations.agent_hello(conn.agent))

    async def agent_frame(self, conn: ConnectionState, frame: wire.Frame,
                          peer: Peer) -> PendingMessage | None:
        """What an agent's frame does; a message or note comes back with its seq."""
        principal = conn.principal
        assert principal is not None
        if frame.type == "ping":
            peer.send(PONG_FRAME.copy())
            return None
        if frame.type == "status":
            status = frame.data["status"]
            await self.agent_status(conn.agent, status, give_back=status == "offline")
            return None
        conv_id = frame.conversation_id
        assert conv_id is not None  # parse_frame requires it for every other type
        logs.bind(conversation_id=conv_id)  # this frame's task and what it starts
        visitor_id, state = await self.conversations.for_agent(principal, conn.chats, conv_id)
        if frame.type in ("message", "note"):
            self.conversations.check_agent_may_write(frame.type, state)
            if state == "offline" and frame.type == "message":
                # A reply to a ticket: it waits for the visitor now, and is this agent's.
                await self.storage.tickets.set_status(conv_id, "pending",
                                                      assignee_id=principal.id)
            return await self.take_seq(conv_id, frame, visitor_id=visitor_id,
                                       sender_type="agent", sender_id=principal.id,
                                       name=conn.agent.name, private=frame.type == "note")
        if frame.type == "resume":
            await self._resume(conv_id, frame.data["after_seq"], True, peer, conn)
        elif frame.type in ("typing", "read"):
            await self.relay(f"visitor:{visitor_id}", relay_frame(frame.data, conv_id, "agent"))
        elif frame.type == "close":
            await self.conversations.close(principal, conv_id)
        elif frame.type == "transfer":
            await self.conversations.transfer(principal, conv_id, frame.data.get("to_agent"),
                                              frame.data.get("to_pool"))
        return None

    async def disconnected(self, conn: ConnectionState) -> None:
        """After a registered socket closed: presence, and an agent's last socket going
        offline."""
        if conn.role == "visitor" and conn.principal is not None:
            # When the visitor's last socket went (the idle close waits that long after it),
            # in the round trip that removes the connection (issue 17, P1).
            now = self.clock()
            remaining = await self.store.presence_leave(
                conn.who, conn.conn_id, gone_key=f"visitor-gone:{conn.principal.id}",
                gone_value=repr(now), gone_ttl_s=2 * self.settings.idle_close_s, now=now)
        else:
            remaining = await self.store.presence_remove(conn.who, conn.conn_id)
        if conn.role == "agent" and remaining == 0:
            try:
                # A console that went away keeps its chats for the grace period; one whose
                # sign-in ended gives them back now.
                await self.agent_status(conn.agent, "offline", give_back=conn.signed_out)
            except Unavailable:
                assert conn.principal is not None
                log.warning("could not mark agent offline", extra={"agent": conn.principal.id})

    async def _present(self, conn: ConnectionState) -> None:
        await self.store.presence_add(conn.who, conn.conn_id, self.node_id,
                                      self.settings.presence_ttl_s, self.clock())

    async def _conversation_created(self, session: VisitorSession) -> None:
        assert session.conversation_id is not None
        try:
            await self.outbox.emit(events.CONVERSATION_CREATED, events.conversation_data(
                conversation_id=session.conversation_id, visitor_id=session.visitor_id,
                state=session.state, pool=session.pool))
        except Unavailable:
            # The row was written a moment ago, so this is rare; the chat goes on, the hook
            # misses this one event (logged).
            log.warning("conversation.created not emitted: database unavailable",
                        extra={"conversation_id": session.conversation_id})

    async def _announce(self, session: VisitorSession, peer: Peer) -> None:
        try:
            await self.conversations.announce_opened(session)
        except Unavailable:
            peer.fail("unavailable", "the service is busy; connect again shortly",
                      wire.CLOSE_TRY_AGAIN_LATER)

    async def _resume(self, conv_id: str, after_seq: int, include_private: bool,
                      peer: Peer, conn: ConnectionState | None = None) -> None:
        """Answer a resume: the replay in seq order, with the live messages that arrived
        meanwhile (held by the Hub) merged in, and none the client already has."""
        if conn is None:
            for msg in await self.resume(conv_id, after_seq, include_private=include_private):
                peer.send_unseen(msg)
            return
        conn.resuming.add(conv_id)
        replay: list[dict[str, Any]] = []
        try:
            replay = await self.resume(conv_id, after_seq, include_private=include_private)
        finally:
            conn.resuming.discard(conv_id)
            held = conn.release(conv_id)
            joined = conn.joining
            conn.joining = False
            by_seq = {int(f["seq"]): f for f in held if int(f["seq"]) > after_seq}
            by_seq.update((int(f["seq"]), f) for f in replay)
            for seq in sorted(by_seq):
                peer.send_unseen(by_seq[seq])
            if joined:
                self._send_held(conn, peer)

    def end_join(self, conn: ConnectionState, peer: Peer) -> None:
        """A joining connection's first frame (other than resume) or its join timeout: the
        live messages held since it connected go out, in seq order."""
        if conn.joining:
            conn.joining = False
            self._send_held(conn, peer)

    @staticmethod
    def _send_held(conn: ConnectionState, peer: Peer) -> None:
        for frame in sorted(conn.release(), key=lambda f: (str(f.get("conversation_id")),
                                                           int(f.get("seq", 0)))):
            peer.send_unseen(frame)

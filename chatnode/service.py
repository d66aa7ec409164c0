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
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from chatnode.accounts import Accounts
from chatnode.connections import ConnectionState, Peer, VisitorSession
from chatnode.conversations import MAX_SEQ, Conversations, relay_frame
from chatnode.errors import ServiceError
from chatnode.queries import audit_action, bounded_int
from tidedesk import logs, metrics, wire
from tidedesk.auth import Principal, TokenService
from tidedesk.broker import INBOUND_QUEUE, Broker, BrokerUnavailable
from tidedesk.delivery import deliver
from tidedesk.envelopes import (
    InboundEvent,
    MessageEvent,
    event_from_mapping,
    inbound_encoder,
)
from tidedesk.errors import Unavailable
from tidedesk.frames import AckFrame, PongFrame, Sender, frame_dict, frame_dicts
from tidedesk.i18n import LOCALES
from tidedesk.ratelimit import RateLimiter
from tidedesk.resume import plan_resume, reseed_floor
from tidedesk.routing_rules import RoutingConfig
from tidedesk.settings import Settings
from tidedesk.storage import Storage
from tidedesk.storage.records import as_dicts
from tidedesk.store import CHECK_DATABASE, Store

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^[a-z0-9_\-]{1,32}$")
MAX_TAGS = 20
PHONE_RE = re.compile(r"^\+?[0-9 ().\-]{3,32}$")
# Audit entries per page: the default, and the most one request may ask for.
AUDIT_PAGE = 100
AUDIT_PAGE_MAX = 500
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
        self.conversations = Conversations(store=store, storage=storage, publish=self.publish)

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
        return PendingMessage(conv_id=conv_id, seq=await self.assign_seq(conv_id, client_id),
                              client_id=client_id, body=frame.data["body"],
                              visitor_id=visitor_id, sender_type=sender_type,
                              sender_id=sender_id, name=name, private=private)

    async def publish_message(self, msg: PendingMessage) -> dict[str, Any]:
        """Hand the message to the routers; returns the ack frame once it is durable. Raises
        :class:`BrokerUnavailable` otherwise: the client must send it again with the same id
        (it will get the same seq, and the router stores it once)."""
        log.debug("message ingested", extra={"seq": msg.seq, "client_id": msg.client_id})
        await self.publish(MessageEvent(
            conversation_id=msg.conv_id, visitor_id=msg.visitor_id, seq=msg.seq,
            id=msg.client_id, from_=cast(Sender, msg.sender_type), sender_id=msg.sender_id,
            name=msg.name, body=msg.body, ts=self.clock(), private=msg.private))
        metrics.MESSAGES_IN.labels(role=msg.sender_type).inc()
        return frame_dict(AckFrame(id=msg.client_id, seq=msg.seq))

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
    async def agent_status(self, agent: Any, status: str) -> None:
        await self.publish({"kind": "agent_status", "agent_id": str(agent.id), "status": status,
                            "pools": list(agent.pool_list), "max_chats": agent.max_chats,
                            "name": agent.name})

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
        return {
            "agents": agents, "queues": queues,
            "counts": {"online_agents": sum(a["status"] == "online" for a in agents),
                       "open_conversations": sum(a["open_chats"] for a in agents),
                       "waiting": sum(len(q) for q in queues.values())},
        }

    # -- reads for the console -----------------------------------------------------------------
    async def canned(self) -> list[dict[str, Any]]:
        return as_dicts(await self.storage.canned.all())

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
        conn.session, created = await self.conversations.open_visitor_session(principal.id)
        conn.principal, conn.who = principal, who
        # Live messages wait until the client resumed (or sent anything else, or
        # JOIN_HOLD_SECS passed): a reconnecting widget resumes right after hello.
        conn.joining = True
        return created

    async def visitor_joined(self, conn: ConnectionState, created: bool, peer: Peer) -> None:
        """Call once the socket is in the Hub: presence, hello, then ask for an agent."""
        session = conn.session
        assert session is not None
        asyncio.get_running_loop().call_later(JOIN_HOLD_SECS, self.end_join, conn, peer)
        await self._present(conn)
        said: list[Any] = []

        def send(frame: dict[str, Any]) -> None:
            if frame.get("type") == "hello":
                said.append(frame.get("last_seq"))
            peer.send(frame)

        waiting = await self.conversations.visitor_hello(session, send)
        if said and not said[0]:
            self.end_join(conn, peer)  # nothing to recover: a client resumes only above 0
        # A queued chat that is in no queue was never announced (say the broker was down when
        # it was created): announcing is idempotent, so ask again.
        if created or (session.state == "queued" and not waiting):
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
            if session.state == "closed":
                # The agent closed the chat: writing again starts a new conversation.
                conn.session, created = await self.conversations.open_visitor_session(
                    session.visitor_id)
                session = conn.session
                await self.conversations.visitor_hello(session, peer.send)
                if created:
                    await self._announce(session, peer)
            return await self.take_seq(session.conversation_id, frame,
                                       visitor_id=session.visitor_id, sender_type="visitor",
                                       sender_id=session.visitor_id, name=session.name)
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
        return None

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
            await self.agent_status(conn.agent, frame.data["status"])
            return None
        conv_id = frame.conversation_id
        assert conv_id is not None  # parse_frame requires it for every other type
        logs.bind(conversation_id=conv_id)  # this frame's task and what it starts
        visitor_id, state = await self.conversations.for_agent(principal, conn.chats, conv_id)
        if frame.type in ("message", "note"):
            self.conversations.check_agent_may_write(frame.type, state)
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
        remaining = await self.store.presence_remove(conn.who, conn.conn_id)
        if conn.role == "agent" and remaining == 0:
            try:
                await self.agent_status(conn.agent, "offline")
            except Unavailable:
                assert conn.principal is not None
                log.warning("could not mark agent offline", extra={"agent": conn.principal.id})

    async def _present(self, conn: ConnectionState) -> None:
        await self.store.presence_add(conn.who, conn.conn_id, self.node_id,
                                      self.settings.presence_ttl_s, self.clock())

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

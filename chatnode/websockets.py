"""WebSocket handlers for visitors and agents (PROTOCOL.md). They parse, authorise, call the
:class:`~chatnode.service.ChatService` and write frames; rules live in the service."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from chatnode import access
from chatnode.accounts import SESSION_ENDED, session_end_applies
from chatnode.errors import ServiceError
from chatnode.http import RequestIds
from chatnode.hub import Hub
from chatnode.origins import origin_allowed
from chatnode.service import ChatService, VisitorSession
from tidedesk import logs, metrics, wire
from tidedesk.auth import Principal
from tidedesk.errors import Unavailable
from tidedesk.i18n import text
from tidedesk.ratelimit import RateLimiter, TokenBucket

log = logging.getLogger(__name__)


def message_id(raw: str | bytes) -> str | None:
    """The client id of a raw frame, if it has one (so an error can name the message)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


class _Socket(RequestIds, WebSocketHandler):
    role = "?"
    # Agents resume every chat they hold when they reconnect: they get more frames per window.
    rate_factor = 1

    def initialize(self, service: ChatService, hub: Hub, node: Any) -> None:
        self.service = service
        self.hub = hub
        self.node = node
        self.conn_id = uuid.uuid4().hex
        self.who = ""
        self.registered = False
        self.bucket = TokenBucket.per_window(
            service.settings.rate_limit_per_10s * self.rate_factor, 10.0, time.monotonic())

    # Origin check: browsers only (non-browser clients send no Origin header).
    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.service.settings.allowed_origins, self.request.host)

    def send(self, frame: dict[str, Any]) -> None:
        try:
            self.write_message(wire.encode(frame))
        except WebSocketClosedError:
            pass

    def fail(self, code: str, message: str, close_code: int | None = None,
             frame_id: str | None = None) -> None:
        metrics.WS_ERRORS.labels(code=code).inc()
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if frame_id is not None:
            frame["id"] = frame_id
        self.send(frame)
        if close_code is not None:
            self.close(close_code, code)

    def token(self) -> str | None:
        return self.get_query_argument("token", None)

    def refuse_if_draining(self) -> bool:
        if self.node.draining:
            self.fail("draining", "this node is shutting down; connect again",
                      wire.CLOSE_TRY_AGAIN_LATER)
            return True
        return False

    async def refuse_if_limited(self, who: str) -> bool:
        """Connection attempts count against the client address's and the principal's
        per-minute limits (the same counters as REST requests): 4429 when over."""
        limiter = RateLimiter(self.service.store, self.service.clock)
        s = self.service.settings
        for scope, key, per_min in (("ip", self.request.remote_ip or "?",
                                     s.rate_limit_ip_per_min),
                                    ("token", who, s.rate_limit_token_per_min)):
            wait = await limiter.hit(scope, key, per_min)
            if wait is not None:
                self.fail("rate_limited", f"too many connections; connect again in {wait} s",
                          wire.CLOSE_RATE_LIMITED)
                return True
        return False

    def frame_allowed(self, frame: wire.Frame, who: str) -> None:
        if not access.allowed(access.WS.get((self.role, frame.type)), who):
            raise ServiceError(403, "forbidden", f"a {who} may not send '{frame.type}' here")

    async def register(self, who: str) -> None:
        self.who = who
        self.hub.register(who, self)
        self.registered = True
        metrics.CONNECTIONS.labels(role=self.role).inc()
        await self.service.store.presence_add(who, self.conn_id, self.service.node_id,
                                              self.service.settings.presence_ttl_s,
                                              self.service.clock())

    async def on_message(self, message: str | bytes) -> None:
        if not self.registered:
            return
        if not self.bucket.take(time.monotonic()):
            self.fail("rate_limited", "too many frames; slow down and reconnect in a few "
                      "seconds", wire.CLOSE_RATE_LIMITED)
            return
        try:
            frame = wire.parse_frame(message, role=self.role,
                                     max_body_chars=self.service.settings.max_body_chars)
            await self.handle(frame)
        except wire.FrameError as exc:
            self.fail(exc.code, exc.message, exc.close_code, exc.frame_id)
        except ServiceError as exc:
            close = wire.CLOSE_FORBIDDEN if exc.status == 403 and self.role == "visitor" else None
            self.fail(exc.code, exc.message, close)
        except Unavailable:
            self.fail("try_again", "the service is busy; nothing was stored, send it again",
                      frame_id=message_id(message))

    async def handle(self, frame: wire.Frame) -> None:
        raise NotImplementedError

    async def send_message(self, conv_id: str, frame: wire.Frame, **kw: Any) -> None:
        """The seq is taken here, in frame order (Tornado hands us one frame at a time); the
        broker confirm and the ack then run concurrently, so a client can pipeline."""
        client_id = frame.data["id"]
        seq = await self.service.assign_seq(conv_id, client_id)
        task = asyncio.ensure_future(self._publish_and_ack(
            conv_id=conv_id, seq=seq, client_id=client_id, body=frame.data["body"], **kw))
        self.node.inflight.add(task)  # holds the reference; draining waits for these
        task.add_done_callback(self.node.inflight.discard)

    async def _publish_and_ack(self, *, conv_id: str, seq: int, client_id: str,
                               **kw: Any) -> None:
        try:
            await self.service.publish_message(conv_id=conv_id, seq=seq, client_id=client_id,
                                               **kw)
        except Unavailable:
            self.fail("try_again", "not stored: the service is busy; send it again with the "
                      "same id", frame_id=client_id)
            return
        except Exception:
            log.exception("ingest failed", extra={"conversation_id": conv_id})
            self.fail("try_again", "not stored; send it again with the same id",
                      frame_id=client_id)
            return
        metrics.MESSAGES_IN.labels(role=self.role).inc()
        self.send({"type": "ack", "id": client_id, "seq": seq})

    async def send_resume(self, conv_id: str, after_seq: int, include_private: bool) -> None:
        for msg in await self.service.resume(conv_id, after_seq, include_private=include_private):
            if self.hub.mark_sent(self.conn_id, msg):
                self.send(msg)

    def on_close(self) -> None:
        if self.registered:
            self.registered = False
            metrics.CONNECTIONS.labels(role=self.role).dec()
            self.hub.unregister(self.who, self)
            task = asyncio.ensure_future(self.after_close())
            self.node.inflight.add(task)
            task.add_done_callback(self.node.inflight.discard)

    async def after_close(self) -> None:
        await self.service.store.presence_remove(self.who, self.conn_id)


class VisitorSocket(_Socket):
    role = "visitor"
    session: VisitorSession

    def send(self, frame: dict[str, Any]) -> None:
        # Track the conversation's state from what the routers tell the visitor, so sending a
        # message needs no database read (messages keep flowing while the database is down).
        if frame.get("type") == "state" and isinstance(frame.get("state"), str):
            self.session.state = frame["state"]
        super().send(frame)

    async def open(self, *args: str, **kwargs: str) -> None:
        if self.refuse_if_draining():
            return
        try:
            principal = self.service.principal(self.token(), "visitor")
            if await self.refuse_if_limited(f"visitor:{principal.id}"):
                return
            self.session, created = await self.service.open_visitor_session(principal.id)
        except ServiceError as exc:
            self.fail(exc.code, exc.message, wire.CLOSE_NOT_AUTHENTICATED)
            return
        except Unavailable:
            # The polite answer: the widget shows it and reconnects a little later.
            lang = self.get_query_argument("lang", "en")
            self.fail("busy", text("unavailable", lang), wire.CLOSE_TRY_AGAIN_LATER)
            return
        await self.register(f"visitor:{principal.id}")
        waiting = await self.send_hello()
        # A queued chat that is in no queue was never announced (say the broker was down when
        # it was created): announcing is idempotent, so ask again.
        if created or (self.session.state == "queued" and not waiting):
            await self.announce_opened()

    async def announce_opened(self) -> None:
        try:
            await self.service.announce_opened(self.session)
        except Unavailable:
            self.fail("unavailable", "the service is busy; connect again shortly",
                      wire.CLOSE_TRY_AGAIN_LATER)

    async def send_hello(self) -> bool:
        """Send hello (and the queue position or agent); True if the chat is in a queue."""
        s = self.session
        self.send({"type": "hello", "visitor_id": s.visitor_id, "conversation_id":
                   s.conversation_id, "last_seq": await self.service.last_seq(s.conversation_id),
                   "state": s.state})
        if s.state == "queued":
            position = await self.service.queue_position(s.pool, s.conversation_id)
            if position is not None:
                self.send({"type": "queue", "position": position})
                return True
        elif s.state == "assigned":
            owner = await self.service.store.owner(s.conversation_id)
            if owner is not None:
                load = await self.service.store.agent_get(owner)
                self.send({"type": "assigned", "agent": {"id": owner,
                                                         "name": load.name if load else ""}})
        return False

    async def handle(self, frame: wire.Frame) -> None:
        self.frame_allowed(frame, "visitor")
        s = self.session
        logs.bind(conversation_id=s.conversation_id)  # this frame's task and what it starts
        named = frame.conversation_id
        if named is not None and named != s.conversation_id:
            raise ServiceError(403, "forbidden", "you can only write to your own conversation")
        if frame.type == "message":
            if s.state == "closed":
                # The agent closed the chat: writing again starts a new conversation.
                self.session, created = await self.service.open_visitor_session(s.visitor_id)
                s = self.session
                await self.send_hello()
                if created:
                    await self.announce_opened()
            await self.send_message(s.conversation_id, frame, visitor_id=s.visitor_id,
                              sender_type="visitor", sender_id=s.visitor_id, name=s.name)
        elif frame.type == "resume":
            await self.send_resume(s.conversation_id, frame.data["after_seq"], False)
        elif frame.type in ("typing", "read"):
            owner = await self.service.store.owner(s.conversation_id)
            if owner is not None:
                relay = {k: v for k, v in frame.data.items() if k in ("type", "on", "seq")}
                relay.update(conversation_id=s.conversation_id, **{"from": "visitor"})
                await self.service.relay(f"agent:{owner}", relay)
        elif frame.type == "ping":
            self.send({"type": "pong"})


class AgentSocket(_Socket):
    role = "agent"
    rate_factor = 4
    principal: Principal
    agent: Any

    def initialize(self, service: ChatService, hub: Hub, node: Any) -> None:
        super().initialize(service, hub, node)
        # conversation id → visitor id of the chats this console was given (hello, assigned):
        # with the store's owner check they let an agent write without a database read.
        self.visitors: dict[str, str] = {}

    def send(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == SESSION_ENDED:  # a notice for this node, not for the console
            ended = session_end_applies(self.principal, frame)
            if ended is not None:
                self.fail(*ended, close_code=wire.CLOSE_NOT_AUTHENTICATED)
            return
        if frame.get("type") == "assigned" and isinstance(frame.get("visitor"), dict):
            self.visitors[frame["conversation_id"]] = frame["visitor"].get("id", "")
        elif frame.get("type") == "hello":
            for item in frame.get("conversations", []):
                self.visitors[item["conversation_id"]] = item["visitor"]["id"]
        super().send(frame)

    async def conversation(self, conv_id: str) -> tuple[str, str]:
        """(visitor id, state) of a conversation this agent may act on; ServiceError if not."""
        visitor_id = self.visitors.get(conv_id)
        if visitor_id and await self.service.store.owner(conv_id) == self.principal.id:
            return visitor_id, "assigned"
        conv = await self.service.agent_can_see(self.principal, conv_id)
        return conv.visitor_id, conv.state

    async def open(self, *args: str, **kwargs: str) -> None:
        if self.refuse_if_draining():
            return
        try:
            self.principal = self.service.principal(self.token(), "access")
            await self.service.accounts.check_live(self.principal)
            if await self.refuse_if_limited(f"agent:{self.principal.id}"):
                return
            self.agent = await self.service.agent_for(self.principal)
            await self.service.agent_status(self.agent, "online")
        except ServiceError as exc:
            self.fail(exc.code, exc.message, wire.CLOSE_NOT_AUTHENTICATED)
            return
        except Unavailable:
            self.fail("unavailable", "the service is busy; connect again shortly",
                      wire.CLOSE_TRY_AGAIN_LATER)
            return
        await self.register(f"agent:{self.principal.id}")
        try:
            # Once more now that the socket is registered: a sign-out or role change while we
            # were connecting sent its notice before this socket could receive it.
            await self.service.accounts.check_live(self.principal)
        except ServiceError as exc:
            self.fail(exc.code, exc.message, wire.CLOSE_NOT_AUTHENTICATED)
            return
        self.send(await self.service.agent_hello(self.agent))

    async def handle(self, frame: wire.Frame) -> None:
        self.frame_allowed(frame, self.principal.role)
        if frame.type == "ping":
            self.send({"type": "pong"})
            return
        if frame.type == "status":
            await self.service.agent_status(self.agent, frame.data["status"])
            return
        conv_id = frame.conversation_id
        assert conv_id is not None  # parse_frame requires it for every other type
        logs.bind(conversation_id=conv_id)  # this frame's task and what it starts
        visitor_id, state = await self.conversation(conv_id)
        if frame.type in ("message", "note"):
            if state == "closed" and frame.type == "message":
                raise ServiceError(409, "conversation_closed", "this conversation is closed")
            await self.send_message(conv_id, frame, visitor_id=visitor_id, sender_type="agent",
                              sender_id=self.principal.id, name=self.agent.name,
                              private=frame.type == "note")
        elif frame.type == "resume":
            await self.send_resume(conv_id, frame.data["after_seq"], True)
        elif frame.type in ("typing", "read"):
            relay = {k: v for k, v in frame.data.items() if k in ("type", "on", "seq")}
            relay.update(conversation_id=conv_id, **{"from": "agent"})
            await self.service.relay(f"visitor:{visitor_id}", relay)
        elif frame.type == "close":
            await self.service.publish({"kind": "close", "conversation_id": conv_id,
                                        "by": f"agent:{self.principal.id}"})
        elif frame.type == "transfer":
            await self.service.transfer(self.principal, conv_id, frame.data.get("to_agent"),
                                        frame.data.get("to_pool"))

    async def after_close(self) -> None:
        remaining = await self.service.store.presence_remove(self.who, self.conn_id)
        if remaining == 0:
            try:
                await self.service.agent_status(self.agent, "offline")
            except Unavailable:
                log.warning("could not mark agent offline", extra={"agent": self.principal.id})

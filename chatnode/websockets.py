"""WebSocket handlers for visitors and agents (docs/protocol.md). They parse, check the access
table, call one :class:`~chatnode.service.ChatService` method and write what it sends or
returns; the rules live in the service. A handler holds its connection id: what the connection
is (who, principal, conversation, rate bucket) is in the Hub's
:class:`~chatnode.connections.ConnectionRegistry`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tornado.web import HTTPError
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13

from chatnode import access
from chatnode.accounts import SESSION_ENDED, session_end_applies
from chatnode.connections import ConnectionState
from chatnode.errors import ServiceError
from chatnode.http import RequestIds
from chatnode.hub import Hub
from chatnode.origins import origin_allowed
from chatnode.service import ChatService, PendingMessage
from chatnode.ws_writes import BUFFERED_READS, BufferedProtocol13, FrameWriter
from tidedesk import metrics, wire
from tidedesk.errors import Unavailable
from tidedesk.frames import ErrorFrame, frame_dict
from tidedesk.i18n import text
from tidedesk.ratelimit import TokenBucket

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
        # Given when the socket opens: a refused handshake never calls on_close, so a state
        # added here could leak.
        self.conn_id = ""
        self.writer = FrameWriter(self)  # frames of one loop pass in one socket write

    def start(self) -> None:
        """Add this connection to the registry; first thing in open()."""
        # Nagle off (issue 17): a small frame written before the peer acknowledged the last
        # one (the sender's ack right behind the echo of its message) otherwise waited for
        # the peer's delayed ACK, up to 40 ms. Frames of one loop pass already share a write.
        self.set_nodelay(True)
        self.conn_id = self.hub.registry.open(self.role, TokenBucket.per_window(
            self.service.settings.rate_limit_per_10s * self.rate_factor, 10.0,
            time.monotonic())).conn_id

    @property
    def state(self) -> ConnectionState:
        return self.hub.registry.get(self.conn_id)

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """Tornado's protocol, reading what has arrived at once (chatnode/ws_writes.py)."""
        protocol = super().get_websocket_protocol()
        if BUFFERED_READS and type(protocol) is WebSocketProtocol13:
            protocol.__class__ = BufferedProtocol13  # the same state; reads and callbacks differ
        return protocol

    def prepare(self) -> Any:
        """The Host check, then the Origin by scheme, host and port before Tornado's own check
        (which takes an Origin whose host:port equals Host as same-origin whatever its scheme:
        an http:// page could then open a socket to the https:// desk)."""
        super().prepare()
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            raise HTTPError(403, "origin not allowed")
        return None

    # Origin check: browsers only (non-browser clients send no Origin header).
    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.service.settings.allowed_origins, self.request.host,
                              "https" if self.request.protocol == "https" else "http")

    def send(self, frame: dict[str, Any]) -> None:
        state = self.hub.registry.find(self.conn_id)
        if state is not None:
            state.track(frame)
        self.writer.write(wire.encode(frame))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.writer.flush()  # what was sent before the close goes out before it
        super().close(code, reason)

    def send_unseen(self, frame: dict[str, Any]) -> None:
        if self.hub.mark_sent(self.conn_id, frame):
            self.send(frame)

    def fail(self, code: str, message: str, close_code: int | None = None,
             frame_id: str | None = None) -> None:
        metrics.WS_ERRORS.labels(code=code).inc()
        self.send(frame_dict(ErrorFrame(code=code, message=message, id=frame_id)))
        if close_code is not None:
            self.close(close_code, code)

    async def token(self) -> str | None:
        """The credential of the connect: a one-time ``?ticket=`` (POST /api/v1/ws-ticket), or
        the v1 ``?token=`` (still read; scrubbed from every log line, see tidedesk/logs.py)."""
        ticket = self.get_query_argument("ticket", None)
        if ticket is not None:
            return await self.service.accounts.redeem_ws_ticket(ticket)
        return self.get_query_argument("token", None)

    def refuse_if_draining(self) -> bool:
        if self.node.draining:
            self.fail("draining", "this node is shutting down; connect again",
                      wire.CLOSE_TRY_AGAIN_LATER)
            return True
        return False

    def refuse(self, exc: ServiceError) -> None:
        """Close a socket whose connection was refused (sign-in or connection rate)."""
        self.fail(exc.code, exc.message, wire.CLOSE_RATE_LIMITED if exc.status == 429
                  else wire.CLOSE_NOT_AUTHENTICATED)

    def frame_allowed(self, frame: wire.Frame, who: str) -> None:
        if not access.allowed(access.WS.get((self.role, frame.type)), who):
            raise ServiceError(403, "forbidden", f"a {who} may not send '{frame.type}' here")

    def register(self) -> None:
        state = self.state
        self.hub.register(state.who, self)
        state.registered = True
        metrics.CONNECTIONS_BY_ROLE[self.role].inc()

    async def on_message(self, message: str | bytes) -> None:
        state = self.state
        if not state.registered:
            return
        if not state.bucket.take(time.monotonic()):
            self.fail("rate_limited", "too many frames; slow down and reconnect in a few "
                      "seconds", wire.CLOSE_RATE_LIMITED)
            return
        try:
            frame = wire.parse_frame(message, role=self.role,
                                     max_body_chars=self.service.settings.max_body_chars)
            pending = await self.handle(frame)
            if pending is not None:
                self.publish_and_ack(pending)
        except wire.FrameError as exc:
            self.fail(exc.code, exc.message, exc.close_code, exc.frame_id)
        except ServiceError as exc:
            close = wire.CLOSE_FORBIDDEN if exc.status == 403 and self.role == "visitor" else None
            self.fail(exc.code, exc.message, close, message_id(message))
        except Unavailable:
            self.fail("try_again", "the service is busy; nothing was stored, send it again",
                      frame_id=message_id(message))

    async def handle(self, frame: wire.Frame) -> PendingMessage | None:
        raise NotImplementedError

    def publish_and_ack(self, pending: PendingMessage) -> None:
        """The seq was taken in frame order (Tornado hands us one frame at a time); the broker
        confirm and the ack run concurrently, so a client can pipeline."""
        task = asyncio.ensure_future(self._publish_and_ack(pending))
        self.node.inflight.add(task)  # holds the reference; draining waits for these
        task.add_done_callback(self.node.inflight.discard)

    async def _publish_and_ack(self, pending: PendingMessage) -> None:
        try:
            ack = await self.service.publish_message(pending)
        except Unavailable:
            self.fail("try_again", "not stored: the service is busy; send it again with the "
                      "same id", frame_id=pending.client_id)
            return
        except Exception:
            log.exception("ingest failed", extra={"conversation_id": pending.conv_id})
            self.fail("try_again", "not stored; send it again with the same id",
                      frame_id=pending.client_id)
            return
        self.send(ack)

    def on_close(self) -> None:
        state = self.hub.registry.close(self.conn_id)
        if state is not None and state.registered:
            state.registered = False
            metrics.CONNECTIONS_BY_ROLE[self.role].dec()
            self.hub.unregister(state.who, self)
            self.spawn(self.service.disconnected(state))

    def spawn(self, work: Any) -> None:
        """Run ``work`` beside this handler; draining waits for it."""
        task = asyncio.ensure_future(work)
        self.node.inflight.add(task)  # holds the reference
        task.add_done_callback(self.node.inflight.discard)


class VisitorSocket(_Socket):
    role = "visitor"

    async def open(self, *args: str, **kwargs: str) -> None:
        self.start()
        if self.refuse_if_draining():
            return
        state = self.state
        try:
            created = await self.service.connect_visitor(state, await self.token(),
                                                         self.request.remote_ip or "?")
        except ServiceError as exc:
            self.refuse(exc)
            return
        except Unavailable:
            # The polite answer: the widget shows it and reconnects a little later.
            lang = self.get_query_argument("lang", "en")
            self.fail("busy", text("unavailable", lang), wire.CLOSE_TRY_AGAIN_LATER)
            return
        if self.hub.registry.find(self.conn_id) is None:
            # Closed while connecting: a presence the cache read registered goes again.
            if state.session is not None and state.session.present:
                self.spawn(self.service.disconnected(state))
            return
        self.register()
        await self.service.visitor_joined(self.state, created, self)

    async def handle(self, frame: wire.Frame) -> PendingMessage | None:
        self.frame_allowed(frame, "visitor")
        return await self.service.visitor_frame(self.state, frame, self)


class AgentSocket(_Socket):
    role = "agent"
    rate_factor = 4

    @property
    def agent(self) -> Any:
        """The agent's row (the node's heartbeat re-announces agents the store forgot)."""
        state = self.hub.registry.find(self.conn_id)
        return state.agent if state is not None else None

    def send(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == SESSION_ENDED:  # a notice for this node, not for the console
            state = self.hub.registry.find(self.conn_id)
            principal = state.principal if state is not None else None
            ended = session_end_applies(principal, frame) if principal is not None else None
            if ended is not None:
                if state is not None and ended[0] == "token_revoked":
                    state.signed_out = True  # signed out: its chats are given back at once
                self.fail(*ended, close_code=wire.CLOSE_NOT_AUTHENTICATED)
            return
        super().send(frame)

    async def open(self, *args: str, **kwargs: str) -> None:
        self.start()
        if self.refuse_if_draining():
            return
        try:
            await self.service.connect_agent(self.state, await self.token(),
                                             self.request.remote_ip or "?")
        except ServiceError as exc:
            self.refuse(exc)
            return
        except Unavailable:
            self.fail("unavailable", "the service is busy; connect again shortly",
                      wire.CLOSE_TRY_AGAIN_LATER)
            return
        self.register()
        try:
            await self.service.agent_joined(self.state, self)
        except ServiceError as exc:
            self.fail(exc.code, exc.message, wire.CLOSE_NOT_AUTHENTICATED)

    async def handle(self, frame: wire.Frame) -> PendingMessage | None:
        principal = self.state.principal
        assert principal is not None  # frames are only read once the socket is registered
        self.frame_allowed(frame, principal.role)
        return await self.service.agent_frame(self.state, frame, self)

"""The chat node: application factory and lifecycle (start, readiness, drain)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tornado.web

from chatnode import http
from chatnode.hub import Hub
from chatnode.openapi import openapi_document
from chatnode.routes import url_specs
from chatnode.service import ChatService
from tidedesk import logs, metrics
from tidedesk.auth import TokenService
from tidedesk.broker import AtOnce, Broker, node_queue
from tidedesk.frames import ReconnectFrame, frame_dict
from tidedesk.lifecycle import status_to_restore
from tidedesk.mail.jobs import MailJobs
from tidedesk.routing_rules import RoutingConfig
from tidedesk.settings import Settings
from tidedesk.storage import Storage
from tidedesk.store import Store
from tidedesk.webhooks import WebhookOutbox

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Draining: clients are told to reconnect at a random moment within this window (no stampede
# on the remaining nodes), then the node waits this long at most for in-flight work.
DRAIN_SPREAD_SECS = 3.0
DRAIN_TIMEOUT_SECS = 20.0
# How often a node checks that the session store still knows it (see _heartbeat_loop).
STORE_CHECK_SECS = 1.0
# How often a node deletes uploaded files that were never sent (chatnode/attachments.py).
ATTACHMENT_SWEEP_SECS = 600.0

PAGES = {"/demo": "demo.html", "/console": "console.html", "/supervisor": "supervisor.html",
         "/admin": "admin.html", "/inbox": "inbox.html", "/reports": "reports.html",
         "/widget.js": "widget.js"}
# Files served in front of a page's own, joined into one answer: the shop embeds the widget with
# one <script> tag and no build step, and the widget shares the protocol core with the console.
PREPENDED = {"widget.js": ("tidedesk-core.js", "tidedesk-dom.js")}


class PageHandler(http.Hardened):
    """Serves one file of the static folder at a fixed path (with a clear 404 if absent)."""

    def initialize(self, filename: str) -> None:
        self.filename = filename
        if filename == "demo.html":  # a shop's page: the allowed sites may frame it
            self.framable = True
            self.clear()

    def get(self) -> None:
        paths = [STATIC_DIR / name for name in (*PREPENDED.get(self.filename, ()), self.filename)]
        missing = [path.name for path in paths if not path.is_file()]
        if missing:
            self.set_status(404)
            self.finish({"error": {"code": "not_found",
                                   "message": f"{', '.join(missing)} is not installed"}})
            return
        if self.filename.endswith(".js"):
            self.set_header("Content-Type", "application/javascript; charset=utf-8")
            self.set_header("Access-Control-Allow-Origin", "*")
        else:
            self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(b"\n".join(path.read_bytes() for path in paths))


class StaticHandler(http.Hardened, tornado.web.StaticFileHandler):
    """The static folder; a path no file system can hold (a NUL) is a 404, not a 500."""

    def parse_url_path(self, url_path: str) -> str:
        if "\x00" in url_path:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)


class IndexHandler(http.Hardened):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><meta charset=utf-8><title>Tidedesk</title>"
            "<link rel=stylesheet href=/static/app.css>"
            "<h1>Tidedesk</h1><ul>"
            "<li><a href=/demo>Widget demo (a shop page with the chat widget)</a></li>"
            "<li><a href=/console>Agent console</a></li>"
            "<li><a href=/supervisor>Supervisor view</a></li>"
            "<li><a href=/admin>Admin (agents, sites, canned responses, tokens, webhooks)</a></li>"
            "<li><a href=/api/v1/openapi.json>API (OpenAPI)</a></li></ul>")


class ChatNode:
    def __init__(self, *, settings: Settings, broker: Broker, store: Store, storage: Storage,
                 routing: RoutingConfig, clock: Callable[[], float] = time.time,
                 outbox: WebhookOutbox | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.store = store
        self.storage = storage
        self.routing = routing
        self.hub = Hub()
        self.service = ChatService(
            settings=settings, broker=broker, store=store, storage=storage,
            tokens=TokenService(settings.jwt_secret, settings.access_token_ttl_s,
                                settings.refresh_token_ttl_s, settings.visitor_token_ttl_s),
            clock=clock, outbox=outbox or WebhookOutbox(
                storage, allowed_networks=settings.webhook_allowed_networks,
                per_url=settings.webhook_per_url_concurrency), routing=routing)
        self.started = False
        self.draining = False
        self.inflight: set[asyncio.Future[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._marker = f"heartbeat:{settings.node_id}"
        self.mail = MailJobs(settings=settings, storage=storage, store=store,
                             post=self.service.post_mail_reply, clock=clock)

    def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if self.draining:
            return False, "draining"
        if not self.broker.ready:
            return False, "broker unavailable"
        if not self.store.ready:
            return False, "session store unavailable"
        return True, "ok"

    async def start(self) -> None:
        await self.broker.declare_node_queue(self.settings.node_id)
        await self.broker.consume(node_queue(self.settings.node_id), AtOnce(self.hub.on_delivery),
                                  prefetch=200)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        self.mail.start()
        self._sweeper = asyncio.create_task(self._sweep_loop())
        self.started = True
        metrics.READY.set(1)

    async def _heartbeat_loop(self) -> None:
        # Refreshed three times per TTL, so a live connection never looks gone; and at once
        # when the store no longer holds this node's marker (it restarted empty), so online
        # agents are announced again within a second, not up to a third of the TTL later
        # (until then the routers see nobody online and turn new chats into tickets).
        ttl = self.settings.presence_ttl_s
        loop = asyncio.get_running_loop()
        due = loop.time() + ttl / 3
        while True:
            await asyncio.sleep(min(STORE_CHECK_SECS, ttl / 3))
            try:
                if loop.time() >= due or await self.store.kv_get(
                        self._marker, self.service.clock()) is None:
                    await self.heartbeat(ttl)
                    due = loop.time() + ttl / 3
            except Exception as exc:
                log.warning("presence heartbeat failed; next one retries",
                            extra={"error": str(exc)})

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(ATTACHMENT_SWEEP_SECS)
            try:
                removed = await self.service.attachments.sweep_unsent()
                if removed:
                    log.info("unsent attachments deleted", extra={"count": removed})
            except Exception as exc:
                log.warning("attachment sweep failed; the next one retries",
                            extra={"error": str(exc)})

    async def heartbeat(self, ttl: float) -> None:
        """Refresh presence; re-announce agents the store forgot (it restarted empty), so they
        get chats again and take back the ones the database says are theirs, and agents a
        router counted gone for a lapsed presence while their socket here lived on (a store
        outage longer than the heartbeat), with the status they had."""
        now = self.service.clock()
        announced: set[str] = set()
        for who, conn in self.hub.connections():
            await self.store.presence_add(who, conn.conn_id, self.settings.node_id, ttl, now)
            agent = getattr(conn, "agent", None)
            if who.startswith("agent:") and agent is not None and who not in announced:
                announced.add(who)
                record = await self.store.agent_get(who.split(":", 1)[1])
                status = status_to_restore(known=record is not None,
                                           lapsed_from=record.lapsed_from if record else "")
                if status is not None:
                    await self.service.agent_status(agent, status)
        await self.store.kv_set(self._marker, "1", ttl, now)

    async def drain(self, spread_s: float = DRAIN_SPREAD_SECS,
                    timeout_s: float = DRAIN_TIMEOUT_SECS) -> None:
        """Not ready → tell every client to reconnect (spread over ``spread_s``) → wait for
        in-flight messages to be confirmed and acked → stop consuming."""
        self.draining = True
        metrics.READY.set(0)
        loop = asyncio.get_running_loop()
        conns = self.hub.connections()
        for _, conn in conns:
            after_ms = int(random.uniform(0, spread_s) * 1000)
            conn.send(frame_dict(ReconnectFrame(after_ms=after_ms)))
            loop.call_later(after_ms / 1000 + 0.5, conn.close, 1012, "node draining")
        deadline = loop.time() + spread_s + timeout_s
        while (self.inflight or self.hub.count()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.mail.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.broker.stop_consuming()
        log.info("drained", extra={"connections_left": self.hub.count()})

    def make_app(self, **extra: Any) -> tornado.web.Application:
        s = self.settings
        deps = {"service": self.service, "node": self}
        ws_deps = {"service": self.service, "hub": self.hub, "node": self}
        # The API and the sockets come from the route table; the index, the static folder and
        # the pages are files for browsers, with no access rule and no OpenAPI entry.
        routes: list[Any] = [(r"/", IndexHandler), *url_specs(deps, ws_deps),
                             (r"/static/(.*)", StaticHandler,
                              {"path": str(STATIC_DIR)})]
        routes += [(path, PageHandler, {"filename": name}) for path, name in PAGES.items()]
        return tornado.web.Application(
            routes,
            default_handler_class=http.NotFoundHandler,
            default_handler_args=deps,
            openapi_document=openapi_document(),
            websocket_ping_interval=s.ws_ping_interval_s or None,
            websocket_ping_timeout=s.ws_ping_timeout_s,
            websocket_max_message_size=s.ws_max_message_size,
            xheaders=True,
            log_function=logs.log_access,
            tidedesk_settings=s,
            **extra,
        )

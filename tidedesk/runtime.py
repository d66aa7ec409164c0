"""Wiring one process from settings: embedded (chat node + router in one process), a chat
node alone, or a router alone. Backends come from settings (in-process when no URL is set)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from tornado.httpserver import HTTPServer

from chatnode.app import ChatNode
from routernode.retention import RetentionJob
from routernode.router import Router
from tidedesk.auth import hash_password, verify_password
from tidedesk.blobs import delete_conversation_files, open_blobs
from tidedesk.broker import Broker, MemoryBroker
from tidedesk.connect_cache import ConnectCache
from tidedesk.crypto import FieldCipher
from tidedesk.envelopes import batches_publishes
from tidedesk.eventloop import loop_name
from tidedesk.passwords import password_problem
from tidedesk.probes import probe_app
from tidedesk.routing_rules import DEFAULT_RULES, RoutingConfig, RoutingConfigError, parse_rules
from tidedesk.settings import DEMO_PASSWORD, Settings, SettingsError
from tidedesk.startup import BackendNotUp, Waiter, resolve_and_connect
from tidedesk.storage import Storage
from tidedesk.store import MemoryStore, Store
from tidedesk.webhooks import WebhookOutbox

log = logging.getLogger(__name__)

DEMO_CANNED = {
    "hello": "Hello! How can I help you today?",
    "shipping": "Orders ship within 24 hours; you will get a tracking link by e-mail.",
    "thanks": "Thank you for chatting with us. Have a great day!",
}


# What one HTTP connection may cost (issue 18). Bodies: the largest legal JSON body; a route
# that takes more (attachment uploads) streams and raises its own limit per request
# (``request.connection.set_max_body_size``, see chatnode/http.py ``max_body_bytes``). The read
# buffer holds one chunk of that at a time. Headers must arrive within the idle timeout (Tornado
# uses it as the header timeout too), a body within the body timeout. An upgraded WebSocket is no
# longer an HTTP connection: its own pings decide when it is dead.
MAX_BODY_BYTES = 64 * 1024
HTTP_LIMITS: dict[str, Any] = {
    "max_body_size": MAX_BODY_BYTES,
    "max_buffer_size": 1024 * 1024,
    "max_header_size": 16 * 1024,
    "idle_connection_timeout": 60.0,
    "body_timeout": 30.0,
}


def load_routing(settings: Settings) -> RoutingConfig:
    if not settings.routing_file:
        return parse_rules(DEFAULT_RULES)
    try:
        data = yaml.safe_load(Path(settings.routing_file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"TIDEDESK_ROUTING_FILE: cannot read {settings.routing_file} "
                            f"({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"TIDEDESK_ROUTING_FILE: not valid YAML ({exc})") from None
    try:
        return parse_rules(data)
    except RoutingConfigError as exc:
        raise SettingsError(f"TIDEDESK_ROUTING_FILE {settings.routing_file}: {exc}") from None


def make_broker(settings: Settings) -> Broker:
    if settings.broker_url:
        from tidedesk.rabbitmq import RabbitBroker

        return RabbitBroker(settings.broker_url, confirm_timeout_s=settings.ack_timeout_s,
                            batch=batches_publishes(settings.envelope_format))
    return MemoryBroker(confirm_timeout_s=settings.ack_timeout_s)


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from tidedesk.redisstore import RedisStore

        return RedisStore(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryStore()


def is_loopback(host: str) -> bool:
    """``host`` (what the server binds to) takes connections from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_demo_exposure(storage: Storage, settings: Settings, host: str) -> None:
    """The demo admin's password is printed in the README: bound anywhere but loopback, the
    embedded server refuses to start while that password would sign anyone in as admin."""
    if is_loopback(host):
        return
    why = (f"tidedesk dev is bound to {host}, not loopback, and the demo admin "
           f"{settings.demo_agent_email} would have the public demo password: anyone who can "
           "reach this address could sign in as admin. Set TIDEDESK_DEMO_AGENT_PASSWORD to a "
           "password of your own (or bind TIDEDESK_HOST=127.0.0.1)")
    if settings.demo_agent_password == DEMO_PASSWORD:
        raise SettingsError(why)
    existing = storage.agents.by_email_sync(settings.demo_agent_email)
    if existing is not None and verify_password(existing.password_hash, DEMO_PASSWORD):
        raise SettingsError(why.replace("would have", "has (from an earlier run)") + "; then "
                            "change the agent's password or remove it")
    problem = password_problem(settings.demo_agent_password)
    if problem is not None:
        raise SettingsError(f"TIDEDESK_DEMO_AGENT_PASSWORD: {problem} (the server is bound to "
                            f"{host}, reachable from other machines)")


def seed_demo(storage: Storage, settings: Settings, pools: tuple[str, ...],
              host: str = "127.0.0.1") -> None:
    """Embedded mode: a demo agent (admin, every pool) and a few canned responses."""
    check_demo_exposure(storage, settings, host)
    if storage.agents.by_email_sync(settings.demo_agent_email) is None:
        storage.agents.create_sync(email=settings.demo_agent_email, name="Demo Agent",
                                  password_hash=hash_password(settings.demo_agent_password),
                                  role="admin", pools=pools, max_chats=3, totp_secret=None)
    storage.canned.seed_sync(DEMO_CANNED)


DEFAULT_PORTS = {"mysql": 3306, "mariadb": 3306, "amqp": 5672, "amqps": 5671, "redis": 6379,
                 "rediss": 6379}


def backend_addresses(settings: Settings) -> list[tuple[str, str, int]]:
    """(name, host, port) of every networked backend the settings name (none when embedded)."""
    urls = [("database", u) for u in settings.database_url]
    urls += [("rabbitmq", settings.broker_url or ""), ("redis", settings.redis_url or "")]
    out = []
    for name, url in urls:
        parts = urlsplit(url)
        port = DEFAULT_PORTS.get(parts.scheme)
        if port is None or not parts.hostname:
            continue  # sqlite, or not set: in-process
        out.append((name, parts.hostname, parts.port or port))
    return out


class _Starting:
    """What /readyz answers while the process waits for its backends."""

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter

    def readiness(self) -> tuple[bool, str]:
        return False, self.waiter.waiting_for or "starting"


class Runtime:
    """``role``: ``dev`` (chat node + router, seeds the demo), ``chatnode`` or ``router``."""

    def __init__(self, settings: Settings, role: str, *, broker: Broker | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings
        self.role = role
        self.routing = load_routing(settings)
        self.broker = broker or make_broker(settings)
        self.store = store or make_store(settings)
        self.storage = Storage(settings.database_url, settings.db_pool_size,
                               cipher=FieldCipher(settings.aes_key, settings.aes_previous_keys),
                               encrypt_bodies=settings.encrypt_message_bodies)
        # issue 17: a router's writes (routing, closing, retention) forget the visitors'
        # connect-cache entries; a chat node's ChatService makes its own cache.
        self.connect_cache = (ConnectCache(self.store, self.storage) if role == "router"
                              else None)
        # Webhook events: every role emits into it; the embedded process and routers also
        # run its dispatcher (tidedesk/webhooks.py).
        queues = None
        if settings.broker_url:
            from tidedesk.webhook_queues import RabbitWebhookQueues

            queues = RabbitWebhookQueues(settings.broker_url)
        self.outbox = WebhookOutbox(self.storage,
                                    allowed_networks=settings.webhook_allowed_networks,
                                    per_url=settings.webhook_per_url_concurrency,
                                    queues=queues)
        self.node: ChatNode | None = None
        self.router: Router | None = None
        self.retention: RetentionJob | None = None
        self.server: HTTPServer | None = None
        self.port: int | None = None
        self.waiter: Waiter | None = None

    async def start(self, port: int | None = None, host: str | None = None) -> None:
        """Listen at once (``/healthz`` 200, ``/readyz`` 503 saying what it waits for), wait for
        DNS and each backend with back-off (issue 19), then serve the role's app."""
        bind_host = host or self.settings.host
        waiter = Waiter(self.settings.startup_wait_s)
        self.waiter = waiter
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, self.settings.port if port is None else port))
        sock.listen(1024)
        sock.setblocking(False)
        self.server = HTTPServer(probe_app(_Starting(waiter)), xheaders=True, **HTTP_LIMITS)
        self.server.add_sockets([sock])
        self.port = sock.getsockname()[1]
        for name, bhost, bport in backend_addresses(self.settings):
            await waiter.step(f"{name} at {bhost}:{bport}",
                              lambda h=bhost, p=bport: resolve_and_connect(h, p))  # type: ignore[misc]
        await waiter.step("database", lambda: self.storage.run(self.storage.migrate_all))
        if self.role == "dev":
            await self.storage.run(seed_demo, self.storage, self.settings, self.routing.pools,
                                   bind_host)
        await self.broker.start()
        await waiter.step("rabbitmq", self._broker_ready)
        await waiter.step("redis", self.store.start)
        if self.role in ("dev", "router"):
            self.router = Router(broker=self.broker, store=self.store, storage=self.storage,
                                 routing=self.routing,
                                 max_waiting_per_pool=self.settings.max_waiting_per_pool,
                                 envelope_format=self.settings.envelope_format,
                                 agent_grace_s=self.settings.agent_grace_s,
                                 idle_close_s=self.settings.idle_close_s,
                                 reply_mail_delay_s=(self.settings.mail_reply_delay_s
                                                     if self.settings.mail_enabled else None),
                                 emit=self.outbox.emit, listening=self.outbox.listening)
            await self.router.start()
            await self.outbox.start()
            blobs = open_blobs(self.settings.attachments_url, data_dir=self.settings.data_dir,
                               database=self.storage.database,
                               cipher=(self.storage.cipher
                                       if self.settings.encrypt_message_bodies else None))
            self.retention = RetentionJob(
                storage=self.storage, store=self.store, days=self.settings.retention_days,
                owner=self.settings.node_id,
                delete_files=lambda conv_id: delete_conversation_files(self.storage, blobs,
                                                                       conv_id))
            self.retention.start()
        if self.role in ("dev", "chatnode"):
            self.node = ChatNode(settings=self.settings, broker=self.broker, store=self.store,
                                 storage=self.storage, routing=self.routing,
                                 outbox=self.outbox)
            await self.node.start()
            app = self.node.make_app()
        else:
            assert self.router is not None
            app = probe_app(self.router)
        # Later requests (keep-alive ones too) go to the role's app.
        self.server.request_callback = app
        waiter.done()

    async def _broker_ready(self) -> None:
        if not self.broker.ready:
            raise BackendNotUp("the RabbitMQ connection is not up yet")

    async def stop(self, drain: bool = True) -> None:
        if self.node is not None and drain:
            await self.node.drain()
        if self.server is not None:
            self.server.stop()
        if self.node is not None:
            await self.node.mail.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.router is not None:
            await self.router.stop()
        await self.outbox.stop()
        await self.broker.stop_consuming()
        # Let the last acks and batches finish before the backends go.
        await asyncio.sleep(0.1)
        await self.broker.close()
        await self.store.close()
        await self.storage.run(lambda: None)
        if self.node is not None:
            self.node.service.attachments.close()
        self.storage.close()

    def describe(self) -> dict[str, Any]:
        return {"role": self.role, "port": self.port, "node_id": self.settings.node_id,
                "embedded": self.settings.embedded, "event_loop": loop_name()}

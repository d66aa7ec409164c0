"""Wiring one process from settings: embedded (chat node + router in one process), a chat
node alone, or a router alone. Backends come from settings (in-process when no URL is set)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import yaml
from tornado.httpserver import HTTPServer

from chatnode.app import ChatNode
from routernode.router import Router
from tidedesk.auth import hash_password
from tidedesk.broker import Broker, MemoryBroker
from tidedesk.crypto import FieldCipher
from tidedesk.probes import probe_app
from tidedesk.routing_rules import DEFAULT_RULES, RoutingConfig, RoutingConfigError, parse_rules
from tidedesk.settings import Settings, SettingsError
from tidedesk.storage import Storage
from tidedesk.store import MemoryStore, Store
from tidedesk.webhooks import WebhookOutbox

log = logging.getLogger(__name__)

DEMO_CANNED = {
    "hello": "Hello! How can I help you today?",
    "shipping": "Orders ship within 24 hours; you will get a tracking link by e-mail.",
    "thanks": "Thank you for chatting with us. Have a great day!",
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

        return RabbitBroker(settings.broker_url, confirm_timeout_s=settings.ack_timeout_s)
    return MemoryBroker(confirm_timeout_s=settings.ack_timeout_s)


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from tidedesk.redisstore import RedisStore

        return RedisStore(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryStore()


def seed_demo(storage: Storage, settings: Settings, pools: tuple[str, ...]) -> None:
    """Embedded mode: a demo agent (admin, every pool) and a few canned responses."""
    if storage.agents.by_email_sync(settings.demo_agent_email) is None:
        storage.agents.create_sync(email=settings.demo_agent_email, name="Demo Agent",
                                  password_hash=hash_password(settings.demo_agent_password),
                                  role="admin", pools=pools, max_chats=3, totp_secret=None)
    storage.canned.seed_sync(DEMO_CANNED)


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
        self.server: HTTPServer | None = None
        self.port: int | None = None

    async def start(self, port: int | None = None, host: str | None = None) -> None:
        await self.storage.run(self.storage.migrate_all)
        if self.role == "dev":
            await self.storage.run(seed_demo, self.storage, self.settings, self.routing.pools)
        await self.broker.start()
        await self.store.start()
        if self.role in ("dev", "router"):
            self.router = Router(broker=self.broker, store=self.store, storage=self.storage,
                                 routing=self.routing,
                                 max_waiting_per_pool=self.settings.max_waiting_per_pool,
                                 envelope_format=self.settings.envelope_format,
                                 emit=self.outbox.emit)
            await self.router.start()
            await self.outbox.start()
        if self.role in ("dev", "chatnode"):
            self.node = ChatNode(settings=self.settings, broker=self.broker, store=self.store,
                                 storage=self.storage, routing=self.routing,
                                 outbox=self.outbox)
            await self.node.start()
            app = self.node.make_app()
        else:
            assert self.router is not None
            app = probe_app(self.router)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or self.settings.host, self.settings.port if port is None else port))
        sock.listen(1024)
        sock.setblocking(False)
        self.server = HTTPServer(app, xheaders=True)
        self.server.add_sockets([sock])
        self.port = sock.getsockname()[1]

    async def stop(self, drain: bool = True) -> None:
        if self.node is not None and drain:
            await self.node.drain()
        if self.server is not None:
            self.server.stop()
        if self.router is not None:
            await self.router.stop()
        await self.outbox.stop()
        await self.broker.stop_consuming()
        # Let the last acks and batches finish before the backends go.
        await asyncio.sleep(0.1)
        await self.broker.close()
        await self.store.close()
        await self.storage.run(lambda: None)
        self.storage.close()

    def describe(self) -> dict[str, Any]:
        return {"role": self.role, "port": self.port, "node_id": self.settings.node_id,
                "embedded": self.settings.embedded}

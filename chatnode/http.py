"""REST handlers (thin: parse, authorise, call the service, write JSON)."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.web import HTTPError, RequestHandler

from chatnode.openapi import openapi_document
from chatnode.origins import origin_allowed
from chatnode.service import ChatService, ServiceError
from tidedesk import logs, metrics
from tidedesk.auth import Principal
from tidedesk.errors import Unavailable
from tidedesk.i18n import text

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024


class RequestIds(RequestHandler):
    """Mixin for every handler: the answer carries ``X-Request-ID`` (the client's or proxy's
    when it is a sane id, else a new one), and so does every log line of the request or of the
    WebSocket connection, as ``request_id`` (``tidedesk.logs``)."""

    @functools.cached_property
    def request_id(self) -> str:
        return logs.request_id_from(self.request.headers.get("X-Request-ID"))

    def clear(self) -> None:
        # Tornado calls clear() before anything else and again before an error answer, so the
        # header survives send_error. Binding here also replaces the ids a previous request on
        # the same keep-alive connection left behind.
        super().clear()
        self.set_header("X-Request-ID", self.request_id)
        logs.bind(request_id=self.request_id, conversation_id=None)


class JsonHandler(RequestIds):
    def initialize(self, service: ChatService, node: Any) -> None:
        self.service = service
        self.node = node
        self._started = time.perf_counter()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            code, message = exc.code, exc.message
        elif isinstance(exc, Unavailable):
            code, message = "busy", text("unavailable", self.locale_hint())
        elif status_code == 404:
            code = "not_found"
            message = f"no such path {self.request.path}; see /api/v1/openapi.json"
        elif status_code == 405:
            code, message = "method_not_allowed", f"{self.request.method} is not allowed here"
        elif status_code < 500:
            code, message = "bad_request", self._reason
        else:
            code, message = "internal", "something went wrong on our side; it has been logged"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            status_code = exc.status
        elif isinstance(exc, Unavailable):
            status_code = 503
            self.set_header("Retry-After", "5")
        super().send_error(status_code, **kwargs)

    def locale_hint(self) -> str:
        """zh-CN when the body or the browser asks for Chinese, else English."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("locale") == "zh-CN":
            return "zh-CN"
        accept = self.request.headers.get("Accept-Language", "")
        return "zh-CN" if accept.lower().startswith("zh") else "en"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ServiceError | Unavailable):
            return  # expected: a client error, or a backend outage answered with 503 busy
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        status = self.get_status()
        handler = type(self).__name__
        metrics.HTTP_LATENCY.labels(handler=handler, method=self.request.method).observe(
            time.perf_counter() - self._started)
        if status >= 400:
            metrics.HTTP_ERRORS.labels(status=str(status)).inc()

    def json_body(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_JSON_BYTES:
            raise ServiceError(413, "body_too_large", f"the body is larger than {MAX_JSON_BYTES} "
                               "bytes")
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise ServiceError(400, "invalid_json", "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise ServiceError(400, "invalid_json", "the body must be a JSON object")
        return data

    def bearer(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return None

    def agent_principal(self) -> Principal:
        return self.service.principal(self.bearer(), "access")

    def int_arg(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ServiceError(400, "invalid_query", f"'{name}' must be an integer") from None
        if not lo <= value <= hi:
            raise ServiceError(400, "invalid_query", f"'{name}' must be between {lo} and {hi}")
        return value


class CorsMixin(JsonHandler):
    """For the endpoints a widget on a shop's own site calls (another origin than ours):
    answers preflights and allows the origins of ``TIDEDESK_ALLOWED_ORIGINS``."""

    CORS_METHODS = "GET, POST, OPTIONS"

    def prepare(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin_allowed(origin, self.service.settings.allowed_origins,
                                     self.request.host):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
            self.set_header("Access-Control-Allow-Methods", self.CORS_METHODS)
            self.set_header("Access-Control-Max-Age", "600")

    def options(self, *args: str) -> None:
        self.set_status(204)
        self.finish()


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise HTTPError(404)


class HealthHandler(JsonHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    def get(self) -> None:
        ready, reason = self.node.readiness()
        self.write_json({"ready": ready, "reason": reason}, 200 if ready else 503)


class MetricsHandler(JsonHandler):
    def get(self) -> None:
        # tidedesk_ready follows /readyz at every scrape (a router that lost RabbitMQ or
        # MariaDB shows 0, not the 1 it set when it started).
        metrics.READY.set(1 if self.node.readiness()[0] else 0)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


class OpenApiHandler(JsonHandler):
    def get(self) -> None:
        self.write_json(openapi_document())


class VisitorsHandler(CorsMixin):
    async def post(self) -> None:
        self.write_json(await self.service.create_visitor(self.json_body()), 201)


class LoginHandler(JsonHandler):
    async def post(self) -> None:
        body = self.json_body()
        self.write_json(await self.service.login(body.get("email"), body.get("password"),
                                                 body.get("totp")))


class RefreshHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.refresh(self.json_body().get("refresh_token")))


class MeHandler(JsonHandler):
    async def get(self) -> None:
        agent = await self.service.agent_for(self.agent_principal())
        self.write_json({"id": str(agent.id), "name": agent.name, "email": agent.email,
                         "role": agent.role, "pools": list(agent.pool_list),
                         "max_chats": agent.max_chats, "totp": bool(agent.totp_secret)})


class MessagesHandler(CorsMixin):
    async def get(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        token = self.bearer()
        include_private = False
        try:
            principal = self.service.principal(token, "access")
        except ServiceError:
            # Visitors may read their own conversation with their visitor token.
            visitor = self.service.principal(token, "visitor")
            conv = await self.service.storage.conversation(conv_id)
            if conv is None or conv.visitor_id != visitor.id:
                raise ServiceError(403, "forbidden", "this is not your conversation") from None
        else:
            await self.service.agent_can_see(principal, conv_id)
            include_private = True
        after = self.int_arg("after_seq", None, 0, 2**53)
        before = self.int_arg("before_seq", None, 1, 2**53)
        if after is not None and before is not None:
            raise ServiceError(400, "invalid_query", "give after_seq or before_seq, not both")
        limit = self.int_arg("limit", 100, 1, 500) or 100
        messages = await self.service.storage.messages(
            conv_id, after_seq=after, before_seq=before, limit=limit,
            include_private=include_private)
        self.write_json({"messages": messages})


class AgentsHandler(JsonHandler):
    async def get(self) -> None:
        self.agent_principal()
        self.write_json({"agents": await self.service.agents_overview()})


class CannedHandler(JsonHandler):
    async def get(self) -> None:
        self.agent_principal()
        self.write_json({"canned": await self.service.storage.canned()})


class SupervisorHandler(JsonHandler):
    async def get(self) -> None:
        principal = self.agent_principal()
        if not principal.is_supervisor:
            raise ServiceError(403, "forbidden", "the supervisor view needs the supervisor or "
                               "admin role")
        agents = await self.service.agents_overview()
        queues = await self.service.queues_overview(self.node.routing)
        self.write_json({
            "agents": agents, "queues": queues,
            "counts": {"online_agents": sum(a["status"] == "online" for a in agents),
                       "open_conversations": sum(a["open_chats"] for a in agents),
                       "waiting": sum(len(q) for q in queues.values())},
        })

"""REST handlers (thin: parse, authorise, call the service, write JSON)."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from tornado.web import HTTPError, RequestHandler

from chatnode.errors import ServiceError
from chatnode.origins import origin_allowed
from chatnode.service import ChatService
from tidedesk import logs, metrics
from tidedesk.auth import Principal
from tidedesk.errors import Unavailable
from tidedesk.i18n import text
from tidedesk.probes import metrics_page, readiness_answer

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
    # Both set from this handler's entry in chatnode.routes.ROUTES when the routes are built:
    # its OpenAPI path, and who may call each method (none until then: fail closed).
    route: ClassVar[str] = ""
    access_rules: ClassVar[Mapping[str, frozenset[str]]] = {}
    # Probes and scrapes (health, readiness, metrics) are not rate limited.
    rate_limited = True
    CORS_METHODS = "GET, POST, PUT, OPTIONS"

    def initialize(self, service: ChatService, node: Any) -> None:
        self.service = service
        self.node = node
        self._started = time.perf_counter()
        self.principal: Principal | None = None

    async def prepare(self) -> None:
        """CORS headers, the per-address rate limit, then the access rule of this route and
        method (401/403), then the per-principal rate limit. Handlers then use
        ``self.principal``."""
        if self.cors:
            self.cors_headers()
        if self.request.method == "OPTIONS":
            return
        if self.rate_limited:
            await self.limit("ip", self.request.remote_ip or "?",
                             self.service.settings.rate_limit_ip_per_min)
        implemented = getattr(type(self), self.request.method.lower(), None) is not getattr(
            RequestHandler, self.request.method.lower(), None)
        if not implemented:
            return  # Tornado answers 405
        rule = self.access_rules.get(self.request.method)
        if rule is None:  # fail closed: a route nobody wrote an access rule for
            raise ServiceError(403, "forbidden", "this endpoint has no access rule")
        if "public" in rule:
            return
        self.principal = await self.service.accounts.authenticate(self.bearer(), rule)
        if self.rate_limited:
            await self.limit("token", f"{self.principal.kind}:{self.principal.id}",
                             self.service.settings.rate_limit_token_per_min)

    async def limit(self, scope: str, key: str, per_min: int) -> None:
        await self.service.limit(scope, key, per_min, what="requests")

    def cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin_allowed(origin, self.service.settings.allowed_origins,
                                     self.request.host):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
            self.set_header("Access-Control-Allow-Methods", self.CORS_METHODS)
            self.set_header("Access-Control-Max-Age", "600")

    @property
    def cors(self) -> bool:
        """The REST API answers the sites of TIDEDESK_ALLOWED_ORIGINS (and our own host): a
        widget on a shop's site, or an integration with a bearer token (no cookies are used,
        so this lends a foreign page no credentials)."""
        return self.route.startswith("/api/")

    def options(self, *args: str) -> None:
        if not self.cors:
            raise HTTPError(405)
        self.set_status(204)
        self.finish()

    def agent(self) -> Principal:
        """The signed-in agent (routes whose rule admits agents only)."""
        assert self.principal is not None and self.principal.kind == "agent"
        return self.principal

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        # Headers go here: send_error clears them before calling us (CORS too, or a page on
        # an allowed site could not read why it was refused).
        if self.cors and self.service is not None:
            self.cors_headers()
        if isinstance(exc, ServiceError):
            code, message = exc.code, exc.message
            if exc.retry_after is not None:
                self.set_header("Retry-After", str(exc.retry_after))
        elif isinstance(exc, Unavailable):
            code, message = "busy", text("unavailable", self.locale_hint())
            self.set_header("Retry-After", "5")
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


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:  # type: ignore[override]
        raise HTTPError(404)


class HealthHandler(JsonHandler):
    rate_limited = False

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    rate_limited = False

    def get(self) -> None:
        self.write_json(*readiness_answer(self.node))


class MetricsHandler(JsonHandler):
    rate_limited = False

    def get(self) -> None:
        page, content_type = metrics_page(self.node)
        self.set_header("Content-Type", content_type)
        self.finish(page)


class OpenApiHandler(JsonHandler):
    def get(self) -> None:
        self.write_json(self.settings["openapi_document"])


class VisitorsHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.create_visitor(self.json_body()), 201)


class LoginHandler(JsonHandler):
    async def post(self) -> None:
        body = self.json_body()
        self.write_json(await self.service.accounts.login(body.get("email"), body.get("password"),
                                                 body.get("totp"),
                                                 ip=self.request.remote_ip or ""))


class RefreshHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.accounts.refresh(self.json_body().get("refresh_token")))


class LogoutHandler(JsonHandler):
    async def post(self) -> None:
        await self.service.accounts.logout(self.json_body().get("refresh_token"), self.bearer())
        self.write_json({"signed_out": True})


class MeHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json(await self.service.accounts.profile(self.agent()))


class TotpHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.accounts.totp_enrol(self.agent()))


class TotpConfirmHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.accounts.totp_confirm(self.agent(),
                                                        self.json_body().get("code")))


class TotpDisableHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.accounts.totp_disable(self.agent(),
                                                        self.json_body().get("code")))


class MessagesHandler(JsonHandler):
    async def get(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        assert self.principal is not None
        self.write_json({"messages": await self.service.conversations.history(
            self.principal, conv_id, after_seq=self.get_query_argument("after_seq", None),
            before_seq=self.get_query_argument("before_seq", None),
            limit=self.get_query_argument("limit", None))})


class AgentsHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"agents": await self.service.agents_overview()})


class AgentRoleHandler(JsonHandler):
    async def post(self, agent_id: str) -> None:
        self.write_json(await self.service.accounts.set_role(self.agent(), agent_id,
                                                    self.json_body().get("role")))


class CannedHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"canned": await self.service.canned()})


class SupervisorHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json(await self.service.supervisor_overview(self.node.routing))


class AuditHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"entries": await self.service.audit_log(
            limit=self.get_query_argument("limit", None),
            before_id=self.get_query_argument("before_id", None),
            action=self.get_query_argument("action", None))})


# -- issue 14: the inbox -----------------------------------------------------------------------
_VIEW_ARGS = ("view", "q", "label", "pool", "agent", "from", "to", "cursor", "limit")


class ConversationsHandler(JsonHandler):
    async def get(self) -> None:
        args = {name: self.get_query_argument(name, None) for name in _VIEW_ARGS}
        self.write_json(await self.service.inbox.conversations(self.agent(), args))


class ConversationHandler(JsonHandler):
    async def get(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        self.write_json(await self.service.inbox.conversation(self.agent(), conv_id))


class LabelsHandler(JsonHandler):
    async def put(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        self.write_json(await self.service.inbox.set_labels(self.agent(), conv_id,
                                                            self.json_body()))


class ContactHandler(JsonHandler):
    async def get(self, visitor_id: str) -> None:
        self.write_json(await self.service.inbox.contact(self.agent(), visitor_id))


class SearchHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json(await self.service.inbox.search(
            self.agent(), self.get_query_argument("q", None),
            self.get_query_argument("limit", None)))


_REPORT_ARGS = ("from", "to", "pool", "site", "agent")


class ReportSummaryHandler(JsonHandler):
    async def get(self) -> None:
        args = {name: self.get_query_argument(name, None) for name in _REPORT_ARGS}
        self.write_json(await self.service.inbox.report(args, time.time()))


class ReportChartHandler(JsonHandler):
    async def get(self) -> None:
        args = {name: self.get_query_argument(name, None) for name in _REPORT_ARGS}
        svg = await self.service.inbox.report_chart(
            args, time.time(), text("report_by_hour", self.locale_hint()))
        self.set_header("Content-Type", "image/svg+xml; charset=utf-8")
        self.finish(svg)

"""REST handlers (thin: parse, authorise, call the service, write JSON)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from chatnode.attachments import Upload
from chatnode.errors import ServiceError
from chatnode.headers import header_items
from chatnode.origins import host_allowed, origin_allowed
from chatnode.service import ChatService
from tidedesk import logs, metrics, safejson
from tidedesk.attachment_rules import inline
from tidedesk.auth import Principal
from tidedesk.errors import Unavailable
from tidedesk.i18n import text
from tidedesk.probes import metrics_page, readiness_answer

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024




class Hardened(RequestHandler):
    """Mixin for every handler: no ``Server`` version, the browser protections of
    ``chatnode/headers.py``, and the ``Host`` check (``TIDEDESK_PUBLIC_HOSTS``)."""

    # Pages the allowed sites may frame (the widget demo); every other answer refuses framing.
    framable = False
    # Probes answer any Host (HAProxy's health check, Docker's, Prometheus by address).
    host_checked = True

    @property
    def tidedesk_settings(self) -> Any:
        return self.application.settings["tidedesk_settings"]

    def clear(self) -> None:
        super().clear()
        self.clear_header("Server")
        settings = self.application.settings.get("tidedesk_settings")
        framable_by = tuple(settings.allowed_origins if settings is not None else ()) \
            if self.framable else None
        for name, value in header_items(framable_by, self.request.protocol == "https"):
            self.set_header(name, value)

    def host_refusal(self) -> str | None:
        """Why this request's Host is refused, or None."""
        settings = self.application.settings.get("tidedesk_settings")
        if not self.host_checked or settings is None or host_allowed(
                self.request.host_name, settings.public_hosts):
            return None
        return (f"this desk does not answer to the host {self.request.host_name!r}; use one of "
                f"{', '.join(settings.public_hosts)}")

    def prepare(self) -> Any:
        refusal = self.host_refusal()
        if refusal is not None:
            raise HTTPError(400, refusal)
        return None


class RequestIds(Hardened):
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


@stream_request_body
class JsonHandler(RequestIds):
    # The largest body this handler reads (a streaming upload handler sets its own, issue 15).
    max_body_bytes: ClassVar[int] = MAX_JSON_BYTES
    # Both set from this handler's entry in chatnode.routes.ROUTES when the routes are built:
    # its OpenAPI path, and who may call each method (none until then: fail closed).
    route: ClassVar[str] = ""
    access_rules: ClassVar[Mapping[str, frozenset[str]]] = {}
    # Probes and scrapes (health, readiness, metrics) are not rate limited.
    rate_limited = True
    CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"

    def initialize(self, service: ChatService, node: Any) -> None:
        self.service = service
        self.node = node
        self._started = time.perf_counter()
        self.principal: Principal | None = None

    async def prepare(self) -> None:
        """CORS headers, the per-address rate limit, then the access rule of this route and
        method (401/403), then the per-principal rate limit. Handlers then use
        ``self.principal``."""
        refusal = self.host_refusal()
        if refusal is not None:
            raise ServiceError(400, "unknown_host", refusal)
        if self.cors:
            self.cors_headers()
        if self.request.method == "OPTIONS":
            return
        self.check_body_size()
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
                                     self.request.host, self.request.protocol):
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

    def check_body_size(self) -> None:
        """Refuse a body over :attr:`max_body_bytes` from its headers, before it is read: 413
        for a declared ``Content-Length``; a chunked body is cut off by Tornado at the same
        limit (``set_max_body_size``). The server's own limit is this one (tidedesk/runtime.py),
        so nothing that is not a streaming handler buffers more."""
        limit = self.max_body_bytes
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        declared = self.request.headers.get("Content-Length", "0")
        if not declared.isdigit() or int(declared) > limit:
            raise ServiceError(413, "body_too_large", f"the body is larger than {limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        # The body arrives here (the class streams, so prepare can refuse it first); at most
        # max_body_bytes, so joining is cheap. request.body then reads as with any handler.
        self.request.body += chunk

    def json_body(self) -> dict[str, Any]:
        if len(self.request.body) > self.max_body_bytes:
            raise ServiceError(413, "body_too_large", f"the body is larger than "
                               f"{self.max_body_bytes} bytes")
        if not self.request.body:
            return {}
        try:
            data = safejson.loads(self.request.body)
        except safejson.JsonRefused as exc:
            raise ServiceError(400, exc.code, exc.message) from None
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
    host_checked = False

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    rate_limited = False
    host_checked = False

    def get(self) -> None:
        self.write_json(*readiness_answer(self.node))


class MetricsHandler(JsonHandler):
    rate_limited = False
    host_checked = False

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


class MailLinkHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.redeem_mail_link(self.json_body()))


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


class WsTicketHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.accounts.ws_ticket(self.bearer()), 201)


class TheftReportHandler(JsonHandler):
    async def post(self) -> None:
        self.write_json(await self.service.accounts.report_theft(
            self.json_body().get("refresh_token")))


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

    async def post(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        assert self.principal is not None
        self.write_json(await self.service.post_message(self.principal, conv_id,
                                                        self.json_body()), 201)


class TakeHandler(JsonHandler):
    async def post(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        self.write_json(await self.service.assignments.take(self.agent(), conv_id))


class AssignHandler(JsonHandler):
    async def post(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        status, answer = await self.service.assignments.assign(self.agent(), conv_id,
                                                               self.json_body())
        self.write_json(answer, status)


class TicketsHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json(await self.service.tickets(
            self.agent(), status=self.get_query_argument("status", None),
            limit=self.get_query_argument("limit", None),
            before_id=self.get_query_argument("before_id", None)))


class VisitorContactHandler(JsonHandler):
    async def post(self) -> None:
        assert self.principal is not None
        self.write_json(await self.service.visitor_contact(self.principal, self.json_body()))


class TranscriptHandler(JsonHandler):
    """issue 13: mail the visitor their conversation (through the outbox)."""

    async def post(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        assert self.principal is not None
        self.write_json(await self.service.conversations.queue_transcript(
            self.principal, conv_id, self.json_body(), self.service.clock()), 202)


class RatingHandler(JsonHandler):
    """issue 13: the visitor's rating of a conversation, for the agents who may see it."""

    async def get(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        assert self.principal is not None
        self.write_json(await self.service.conversations.rating(self.principal, conv_id))


class HandoffHandler(JsonHandler):
    async def post(self, conv_id: str) -> None:
        logs.bind(conversation_id=conv_id)
        assert self.principal is not None
        self.write_json(await self.service.handoff(self.principal, conv_id, self.json_body()))


class AgentsHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"agents": await self.service.agents_overview()})


class InviteHandler(JsonHandler):
    async def post(self) -> None:
        assert self.principal is not None
        self.write_json(await self.service.accounts.invite(self.principal, self.json_body()),
                        201)


class AcceptInviteHandler(JsonHandler):
    async def post(self) -> None:
        body = self.json_body()
        self.write_json(await self.service.accounts.accept_invite(body.get("token"),
                                                                  body.get("password")))


class AgentHandler(JsonHandler):
    async def put(self, agent_id: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.update_agent(self.principal, agent_id,
                                                        self.json_body()))


class AgentRoleHandler(JsonHandler):
    async def post(self, agent_id: str) -> None:
        self.write_json(await self.service.accounts.set_role(self.agent(), agent_id,
                                                    self.json_body().get("role")))


class ContactHandler(JsonHandler):
    async def get(self, visitor_id: str) -> None:
        self.write_json(await self.service.inbox.contact(self.agent(), visitor_id))

    async def delete(self, visitor_id: str) -> None:
        await self.service.accounts.require_second_factor(self.agent())
        self.write_json(await self.service.privacy.erase(self.agent(), visitor_id))


class ContactExportHandler(JsonHandler):
    async def get(self, visitor_id: str) -> None:
        self.set_header("Content-Disposition",
                        f'attachment; filename="contact-{visitor_id}.json"')
        self.write_json(await self.service.privacy.export(self.agent(), visitor_id))


class CannedHandler(JsonHandler):
    async def get(self) -> None:
        assert self.principal is not None
        self.write_json({"canned": await self.service.canned.visible(self.principal)})

    async def post(self) -> None:
        assert self.principal is not None
        self.write_json(await self.service.canned.create(self.principal, self.json_body()), 201)


class CannedItemHandler(JsonHandler):
    async def put(self, canned_id: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.canned.update(self.principal, canned_id,
                                                         self.json_body()))

    async def delete(self, canned_id: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.canned.delete(self.principal, canned_id))


class SupervisorHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json(await self.service.supervisor_overview(self.node.routing))


class AuditHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"entries": await self.service.audit_log(
            limit=self.get_query_argument("limit", None),
            before_id=self.get_query_argument("before_id", None),
            action=self.get_query_argument("action", None))})


# -- attachments (issue 15) ----------------------------------------------------------------------
# What a downloaded file may do in a browser: nothing (no scripts, no plugins, no navigation),
# so an uploaded HTML or SVG cannot run in our origin even when opened directly.
ATTACHMENT_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@stream_request_body
class AttachmentUploadHandler(JsonHandler):
    """``POST /api/v1/attachments``: the body is fed to an :class:`Upload` as it arrives;
    over-size answers 413 from the Content-Length before a byte is read, and an upload that
    has not finished within ``TIDEDESK_ATTACHMENT_UPLOAD_TIMEOUT_S`` answers 408."""

    upload: Upload | None = None
    _timer: asyncio.TimerHandle | None = None

    def check_body_size(self) -> None:
        """Not the JSON limit: :meth:`prepare` checks the declared size against the site's
        upload limit (``begin_upload``, 413) and sets the connection's limit to match."""

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method != "POST" or self._finished:
            return
        assert self.principal is not None
        self.upload = self.service.attachments.begin_upload(self.principal,
                                                            self.request.headers)
        limits = self.upload.limits
        self.request.connection.set_max_body_size(  # type: ignore[union-attr]
            limits.max_bytes + 2 * 1024 * 1024)
        self._timer = asyncio.get_running_loop().call_later(
            self.service.settings.attachment_upload_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._refuse(ServiceError(408, "upload_timeout", "the upload took too long: try again "
                                  "on a better connection or with a smaller file"))

    def _refuse(self, exc: ServiceError) -> None:
        if self.upload is not None:
            self.upload.discard()
            self.upload = None
        if not self._finished:
            self.send_error(exc.status, exc_info=(type(exc), exc, None))

    def data_received(self, chunk: bytes) -> None:
        if self.upload is None or self._finished:
            return  # refused already: the rest of the body is dropped
        try:
            self.upload.feed(chunk)
        except ServiceError as exc:
            self._refuse(exc)

    async def post(self) -> None:
        upload, self.upload = self.upload, None
        if upload is None or self._finished:
            return
        try:
            result = await upload.finish()
        finally:
            self._stop_timer()
        if not self._finished:
            self.write_json(result, 201)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_connection_close(self) -> None:
        self._stop_timer()
        if self.upload is not None:
            self.upload.discard()
            self.upload = None
        super().on_connection_close()  # ends the wait for the rest of the body

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StreamClosedError):  # the client went away mid-upload
            self.set_status(499, "Client Closed Request")
            self._finished = True
            self.on_finish()
            return
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, StreamClosedError):
            super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self._stop_timer()
        super().on_finish()

    def locale_hint(self) -> str:  # the body is a file, not JSON
        accept = self.request.headers.get("Accept-Language", "")
        return "zh-CN" if accept.lower().startswith("zh") else "en"


class AttachmentHandler(JsonHandler):
    """``GET /api/v1/attachments/{id}`` (and ``/thumbnail``): the bytes, for a bearer token
    of someone who may see them or a signed link; with ETag, Range and a locked-down CSP."""

    thumbnail = False

    async def prepare(self) -> None:
        if self.get_query_argument("sig", None) is None or self.bearer() is not None:
            await super().prepare()
            return
        # A signed link is the credential (an <img> has no bearer header); the service checks
        # it. It is still limited per client address.
        if self.cors:
            self.cors_headers()
        await self.limit("ip", self.request.remote_ip or "?",
                         self.service.settings.rate_limit_ip_per_min)

    async def get(self, att_id: str) -> None:
        attachments = self.service.attachments
        record = await attachments.authorise(
            att_id, self.principal, expires=self.get_query_argument("expires", None),
            signature=self.get_query_argument("sig", None))
        download = await attachments.download(record, thumbnail=self.thumbnail)
        self.set_header("Content-Type", download.content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", ATTACHMENT_CSP)
        # The widget shows these on shops' own sites (another site): same-site would block the
        # <img>. Who may read is decided by the token or the signed link, not by the embedder.
        self.set_header("Cross-Origin-Resource-Policy", "cross-origin")
        self.set_header("Cache-Control", "private, max-age=3600, immutable")
        self.set_header("ETag", download.etag)
        self.set_header("Accept-Ranges", "bytes")
        disposition = "inline" if self.thumbnail or inline(download.content_type) \
            else "attachment"
        self.set_header("Content-Disposition", f"{disposition}; filename*=UTF-8''"
                        f"{quote_name(record.name)}")
        if self.request.headers.get("If-None-Match") == download.etag:
            self.set_status(304)
            self.finish()
            return
        start, length = 0, download.size
        wanted = self.request.headers.get("Range")
        if wanted is not None:
            span = byte_range(wanted, download.size)
            if span is None:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{download.size}")
                self.finish()
                return
            start, length = span
            self.set_status(206)
            self.set_header("Content-Range",
                            f"bytes {start}-{start + length - 1}/{download.size}")
        self.set_header("Content-Length", str(length))
        chunks = download.read(start, length)
        while (chunk := await attachments.next_chunk(chunks)) is not None:
            self.write(chunk)
            await self.flush()
        self.finish()


class AttachmentThumbnailHandler(AttachmentHandler):
    thumbnail = True


class AttachmentLinkHandler(JsonHandler):
    async def get(self, att_id: str) -> None:
        record = await self.service.attachments.authorise(att_id, self.principal)
        self.write_json(self.service.attachments.link(record))


def quote_name(name: str) -> str:
    return quote(name, safe="")


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, length) of a single ``bytes=a-b`` range within ``size``; None if unsatisfiable
    (several ranges are not supported: they get the first one's answer only if it is one)."""
    match = _RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        length = min(int(last), size)
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end - start + 1


class ApiTokensHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"tokens": await self.service.integrations.tokens()})

    async def post(self) -> None:
        assert self.principal is not None
        self.write_json(await self.service.integrations.create_token(self.principal,
                                                                     self.json_body()), 201)


class ApiTokenHandler(JsonHandler):
    async def delete(self, token_id: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.integrations.revoke_token(self.principal, token_id))


class WebhooksHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"webhooks": await self.service.integrations.webhooks()})

    async def post(self) -> None:
        assert self.principal is not None
        self.write_json(await self.service.integrations.create_webhook(self.principal,
                                                                       self.json_body()), 201)


class WebhookHandler(JsonHandler):
    async def delete(self, hook_id: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.integrations.delete_webhook(self.principal, hook_id))


class WebhookDeliveriesHandler(JsonHandler):
    async def get(self, hook_id: str) -> None:
        self.write_json({"deliveries": await self.service.integrations.deliveries(
            hook_id, self.get_query_argument("limit", None))})


class WebhookResendHandler(JsonHandler):
    async def post(self, hook_id: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.integrations.resend(self.principal, hook_id,
                                                               self.json_body()))


class SitesHandler(JsonHandler):
    async def get(self) -> None:
        self.write_json({"sites": await self.service.sites.list()})


class SiteHandler(JsonHandler):
    async def get(self, site: str) -> None:
        self.write_json(await self.service.sites.get(site))

    async def put(self, site: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.sites.put(self.principal, site, self.json_body()))

    async def delete(self, site: str) -> None:
        assert self.principal is not None
        self.write_json(await self.service.sites.delete(self.principal, site))


class WidgetConfigHandler(JsonHandler):
    # Public and the same for every visitor of a site: caches may keep it briefly, so a
    # busy shop page does not ask on every load; a change shows within this time.
    CACHE_SECS = 30

    async def get(self, site: str) -> None:
        config = await self.service.sites.widget_config(site)
        self.set_header("Cache-Control", f"public, max-age={self.CACHE_SECS}")
        self.write_json(config)


# -- issue 14: the inbox -----------------------------------------------------------------------
_VIEW_ARGS = ("view", "q", "label", "pool", "site", "agent", "from", "to", "cursor", "limit")


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

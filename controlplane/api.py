"""REST API (Tornado): the control-plane paths of docs/protocol.md, plus ``/healthz``,
``/metrics`` and the ``GET /v1/audit`` and ``/v1/events`` (scheduled capacity) extensions.
Handlers parse, authorise, call :class:`ControlPlane`, write.

Who did it: the name of the bearer token (never a header: anyone can send one), with the
body's ``by`` after it as ``<token> for <by>`` when given. Why: the ``reason`` field. Both land
in the audit list. Each token has a role: ``alerts`` (the Alertmanager webhook only), ``read``
(the GET paths) or ``operate`` (everything).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

import tornado.web

from controlplane.alerts import PayloadError
from controlplane.config import MAIN_TOKEN_NAME, ApiToken
from controlplane.service import ControlPlane
from controlplane.state import (
    MAX_PIN_TTL_S,
    Conflict,
    OverrideError,
    TargetNotFound,
    UnknownEvent,
    UnknownPolicy,
)
from tidedesk import safejson

MAX_BODY_BYTES = 1024 * 1024  # Alertmanager groups can be large, but not this large
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class BaseHandler(tornado.web.RequestHandler):
    needs_token = True

    def initialize(self, cp: ControlPlane, tokens: Sequence[ApiToken]) -> None:
        self.cp = cp
        self.tokens = tokens
        self.token: ApiToken | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def needed_role(self) -> str:
        return "read" if self.request.method in ("GET", "HEAD") else "operate"

    def prepare(self) -> None:
        if not self.needs_token:
            return
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401, "unauthorized", "send Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="tidedesk-controlplane"'},
            )  # fmt: skip
        given_sha256 = hashlib.sha256(given.strip().encode()).digest()
        matched = None
        for token in self.tokens:  # every one compared: the time does not tell which matched
            if hmac.compare_digest(given_sha256, token.sha256):
                matched = token
        if matched is None:
            raise ApiError(
                401, "unauthorized", "the bearer token is not valid",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )  # fmt: skip
        needed = self.needed_role()
        if not (matched.role == "operate" or matched.role == needed):
            raise ApiError(403, "forbidden", f"the token {matched.name!r} has the role "
                           f"{matched.role}; this needs {needed}")
        self.token = matched

    def write_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))

    def body_json(self, required: bool = True) -> dict[str, Any]:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"body must be at most {MAX_BODY_BYTES} bytes")
        if not self.request.body.strip():
            if required:
                raise ApiError(400, "bad_request", "send a JSON object body")
            return {}
        try:
            doc = safejson.loads(self.request.body)
        except safejson.JsonRefused as exc:
            code = "bad_json" if exc.code == "invalid_json" else exc.code
            raise ApiError(400, code, f"body refused: {exc.message}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        return doc

    def actor(self, body: dict[str, Any]) -> tuple[str, str]:
        by = body.get("by")
        if by is not None and (not isinstance(by, str) or len(by) > 200):
            raise ApiError(400, "bad_request", "by must be a string of at most 200 characters")
        assert self.token is not None
        who = f"{self.token.name} for {by}" if by else self.token.name
        why = body.get("reason", "")
        if not isinstance(why, str) or len(why) > 1000:
            raise ApiError(400, "bad_request", "reason must be a string of at most 1000 characters")
        return who, why

    def limit_arg(self) -> int:
        raw = self.get_query_argument("limit", str(DEFAULT_LIST_LIMIT))
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_LIST_LIMIT:
            raise ApiError(400, "bad_limit", f"limit must be 1..{MAX_LIST_LIMIT}, got {raw!r}")
        return n

    def policy_arg(self) -> str | None:
        name = self.get_query_argument("policy", "") or None
        if name is not None and name not in self.cp.state.names():
            raise ApiError(404, "unknown_policy", f"no policy named {name!r}")
        return name

    def _as_api_error(self, e: BaseException | None) -> ApiError | None:
        if isinstance(e, ApiError):
            return e
        if isinstance(e, UnknownPolicy):
            return ApiError(404, "unknown_policy", f"no policy named {e.args[0]!r}; see /v1/status")
        if isinstance(e, UnknownEvent):
            return ApiError(404, "unknown_event", f"no event named {e.args[0]!r}; see /v1/events")
        if isinstance(e, TargetNotFound):
            return ApiError(409, "target_missing", str(e))
        if isinstance(e, Conflict):
            return ApiError(409, "conflict", str(e))
        if isinstance(e, OverrideError):
            return ApiError(400, "bad_request", str(e))
        return None

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if self._as_api_error(value) is None:  # a user's mistake is not a server error
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        err = self._as_api_error(exc_info[1] if exc_info else None)
        if err is not None:
            self.set_status(err.status)
            for k, v in err.headers.items():
                self.set_header(k, v)
            code, message = err.code, err.message
        else:
            codes = {404: "not_found", 405: "method_not_allowed"}
            code = codes.get(status_code, "internal_error" if status_code >= 500 else "bad_request")
            message = self._reason if status_code < 500 else "internal error; see the daemon's log"
        self.finish(json.dumps({"error": {"code": code, "message": message}}))


class HealthHandler(BaseHandler):
    needs_token = False

    def get(self) -> None:
        self.write_json(200, {"status": "ok"})


class ReadyHandler(BaseHandler):
    """200 when every policy's target was read at its last evaluation; else 503 with why."""

    needs_token = False

    def get(self) -> None:
        reasons = self.cp.state.not_ready()
        if reasons:
            self.write_json(503, {"status": "not_ready", "reasons": reasons})
        else:
            self.write_json(200, {"status": "ready"})


class MetricsHandler(BaseHandler):
    needs_token = False

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.cp.telemetry.render())


class StatusHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(200, {"policies": self.cp.status()})


class PinHandler(BaseHandler):
    def post(self, name: str) -> None:
        body = self.body_json()
        replicas, ttl = body.get("replicas"), body.get("ttl_s")
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise ApiError(400, "bad_request", "replicas must be a whole number")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ApiError(
                400, "bad_request", f"ttl_s must be a number of seconds (1..{MAX_PIN_TTL_S})"
            )
        who, why = self.actor(body)
        try:
            status = self.cp.pin(name, replicas, float(ttl), who, why)
        except Conflict:
            raise
        except OverrideError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        self.write_json(200, {"policy": status})

    def delete(self, name: str) -> None:
        who, why = self.actor(self.body_json(required=False))
        self.write_json(200, {"policy": self.cp.unpin(name, who, why)})


class PauseHandler(BaseHandler):
    def post(self, name: str) -> None:
        who, why = self.actor(self.body_json(required=False))
        self.write_json(200, {"policy": self.cp.pause(name, who, why)})


class ResumeHandler(BaseHandler):
    def post(self, name: str) -> None:
        who, why = self.actor(self.body_json(required=False))
        self.write_json(200, {"policy": self.cp.resume(name, who, why)})


class EventsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(200, {"events": self.cp.events()})

    def post(self) -> None:
        body = self.body_json()
        who, why = self.actor(body)
        event, replaced = self.cp.add_event(body, who, why)
        self.write_json(200 if replaced else 201, {"event": event})


class EventHandler(BaseHandler):
    def delete(self, name: str) -> None:
        who, why = self.actor(self.body_json(required=False))
        self.write_json(200, {"event": self.cp.delete_event(name, who, why)})


class DecisionsHandler(BaseHandler):
    def get(self) -> None:
        decisions = self.cp.decisions(self.policy_arg(), self.limit_arg())
        self.write_json(200, {"decisions": decisions})


class AuditHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(200, {"audit": self.cp.audit(self.policy_arg(), self.limit_arg())})


class AlertsHandler(BaseHandler):
    def needed_role(self) -> str:
        return "alerts"

    def post(self) -> None:
        body = self.body_json()
        try:
            result = self.cp.receive_alerts(body)
        except PayloadError as exc:
            raise ApiError(400, "bad_alert_payload", str(exc)) from None
        self.write_json(200, result)


class NotFoundHandler(BaseHandler):
    needs_token = False

    def prepare(self) -> None:
        raise ApiError(404, "not_found", f"no such path {self.request.path}")


def make_app(cp: ControlPlane, tokens: bytes | Sequence[ApiToken]) -> tornado.web.Application:
    """The API; bearer tokens are checked against the digests of ``tokens`` (the tokens are
    never kept). A bare digest is the one ``operate`` token, named ``operator``."""
    if isinstance(tokens, bytes):
        tokens = (ApiToken(MAIN_TOKEN_NAME, "operate", tokens),)
    deps = {"cp": cp, "tokens": tuple(tokens)}
    name = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"
    return tornado.web.Application(
        [
            (r"/healthz", HealthHandler, deps),
            (r"/readyz", ReadyHandler, deps),
            (r"/metrics", MetricsHandler, deps),
            (r"/v1/status", StatusHandler, deps),
            (rf"/v1/policies/{name}/pin", PinHandler, deps),
            (rf"/v1/policies/{name}/pause", PauseHandler, deps),
            (rf"/v1/policies/{name}/resume", ResumeHandler, deps),
            (r"/v1/events", EventsHandler, deps),
            (rf"/v1/events/{name}", EventHandler, deps),
            (r"/v1/decisions", DecisionsHandler, deps),
            (r"/v1/audit", AuditHandler, deps),
            (r"/v1/alerts", AlertsHandler, deps),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
    )

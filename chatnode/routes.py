"""The chat node's route table: every endpoint once, with its handler and, per method, who may
call it and what the OpenAPI document says about it.

Everything else is derived from :data:`ROUTES`, so a new endpoint is one :class:`Route` plus
its handler and service method:

- the Tornado URL specs (:func:`url_specs`), which also give each REST handler its ``route``
  (the OpenAPI path) and its ``access_rules`` (method -> rule);
- :data:`REST`, the access table the security test walks (fail closed: a method with no
  operation here has no rule, and the handler refuses it with 403);
- the OpenAPI paths (``chatnode/openapi.py``).

The WebSocket routes are listed too; who may send which frame on them is
:data:`chatnode.access.WS`. Static pages and the widget script are not API routes and stay in
``chatnode/app.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tornado.web
from tornado.websocket import WebSocketHandler

from chatnode import http, websockets
from chatnode.access import ADMINS, AGENTS, PUBLIC, SUPERVISORS, VISITOR
from chatnode.schemas import (
    AGENT,
    AUDIT_ENTRY,
    CODE_BODY,
    CONTACT,
    CONVERSATION,
    CONVERSATION_PAGE,
    OBJECT,
    REPORT,
    SEARCH_RESULTS,
    TOKENS,
    error_responses,
    json_content,
    json_response,
)

# Path parameters: the regex Tornado matches (and the pattern the document gives for agents).
CONVERSATION_ID = "[0-9a-f]{1,32}"
AGENT_ID = "[0-9]{1,18}"
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Operation:
    """One method of a route: ``access`` is who may call it (a rule set of
    :mod:`chatnode.access`); the rest is its OpenAPI operation (``security`` and the 429
    answer are added from the rule and the handler, see ``chatnode/openapi.py``)."""

    access: frozenset[str]
    summary: str
    responses: Mapping[str, Any]
    request_body: Mapping[str, Any] | None = None
    parameters: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Route:
    """``path`` is the OpenAPI path template; each ``{name}`` in it matches ``params[name]``."""

    path: str
    handler: type[tornado.web.RequestHandler]
    get: Operation | None = None
    post: Operation | None = None
    params: Mapping[str, str] | None = None
    put: Operation | None = None

    @property
    def operations(self) -> dict[str, Operation]:
        """HTTP method -> operation, for the methods this route serves."""
        return {m: op for m, op in (("GET", self.get), ("POST", self.post), ("PUT", self.put))
                if op is not None}

    @property
    def pattern(self) -> str:
        """The Tornado regex: each path parameter becomes a group of its regex."""
        params = self.params or {}
        return _PARAM.sub(lambda m: f"({params[m.group(1)]})", self.path)

    @property
    def rate_limited(self) -> bool:
        return issubclass(self.handler, http.JsonHandler) and self.handler.rate_limited


def _id_param(pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = f"^{pattern}$"
    return {"name": "id", "in": "path", "required": True, "schema": schema}


_LIMIT = {"name": "limit", "in": "query",
          "schema": {"type": "integer", "minimum": 1, "maximum": 500}}
_VISITOR_BODY = json_content({
    "type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "maxLength": 120},
        "email": {"type": "string", "format": "email"},
        "phone": {"type": "string", "pattern": "^\\+?[0-9 ().\\-]{3,32}$"},
        "tags": {"type": "array", "maxItems": 20,
                 "items": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"}},
        "locale": {"enum": ["en", "zh-CN"]},
        # issue 14: the widget's context, the site's pre-chat form, identify
        "context": {"type": "object", "additionalProperties": False, "properties": {
            "page_url": {"type": "string", "maxLength": 2048},
            "referrer": {"type": "string", "maxLength": 2048},
            "user_agent": {"type": "string", "maxLength": 512},
            "tz": {"type": "string", "maxLength": 64}}},
        "fields": {"type": "object", "maxProperties": 20,
                   "additionalProperties": {"type": "string", "maxLength": 1000}},
        "customer_id": {"type": "string", "pattern": "^[\\w.:@+-]{1,128}$",
                        "description": "the shop's customer id (identify), with customer_hash"},
        "customer_hash": {"type": "string", "description": "hex HMAC-SHA256 of customer_id "
                          "under TIDEDESK_IDENTITY_SECRET, made by the shop's server"}}})
VISITOR_ID = "[0-9a-f]{1,32}"
_VIEW_PARAMS: tuple[dict[str, Any], ...] = (
    {"name": "view", "in": "query",
     "schema": {"enum": ["mine", "unassigned", "tickets", "open", "closed"]}},
    {"name": "q", "in": "query", "schema": {"type": "string"},
     "description": "only conversations whose messages or contact match"},
    {"name": "label", "in": "query", "schema": {"type": "string"}},
    {"name": "pool", "in": "query", "schema": {"type": "string"}},
    {"name": "agent", "in": "query", "schema": {"type": "string"},
     "description": "the agent id holding it"},
    {"name": "from", "in": "query", "schema": {"type": "string"},
     "description": "created at or after: unix seconds or ISO 8601"},
    {"name": "to", "in": "query", "schema": {"type": "string"},
     "description": "created before: unix seconds or ISO 8601"},
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "next_cursor of the previous page"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                "maximum": 100}},
)
_VISITOR_CREATED = json_response({"type": "object", "required": ["visitor_id", "token"],
                                  "properties": {"visitor_id": {"type": "string"},
                                                 "token": {"type": "string"}}}, "created")

_REPORT_PARAMS: tuple[dict[str, Any], ...] = (
    {"name": "from", "in": "query", "schema": {"type": "string"},
     "description": "conversations created at or after: unix seconds or ISO 8601 (default: "
                    "7 days before `to`)"},
    {"name": "to", "in": "query", "schema": {"type": "string"},
     "description": "created before (default: now)"},
    {"name": "pool", "in": "query", "schema": {"type": "string"}},
    {"name": "agent", "in": "query", "schema": {"type": "string"}},
    {"name": "site", "in": "query", "schema": {"type": "string"},
     "description": "needs sites (issue 16): refused with 400 until then"},
)

ROUTES: tuple[Route, ...] = (
    # The chat node's own probes (not tidedesk.probes: these carry X-Request-ID and count in
    # the HTTP metrics); not rate limited, so scrapes are never refused.
    Route("/healthz", http.HealthHandler, get=Operation(
        PUBLIC, "200 while the process runs", {"200": json_response(OBJECT, "alive")})),
    Route("/readyz", http.ReadyHandler, get=Operation(
        PUBLIC, "200 when it takes traffic, 503 starting/draining",
        {"200": json_response(OBJECT, "ready"), "503": json_response(OBJECT, "not ready")})),
    Route("/metrics", http.MetricsHandler, get=Operation(
        PUBLIC, "Prometheus text format", {"200": {"description": "metrics"}})),
    Route("/api/v1/openapi.json", http.OpenApiHandler, get=Operation(
        PUBLIC, "this document", {"200": json_response(OBJECT, "OpenAPI")})),
    Route("/api/v1/visitors", http.VisitorsHandler, post=Operation(
        PUBLIC, "create an anonymous visitor session",
        {"201": _VISITOR_CREATED, **error_responses(400, 413)}, _VISITOR_BODY)),
    Route("/api/v1/auth/login", http.LoginHandler, post=Operation(
        PUBLIC, "agent sign-in (password, then TOTP when enabled)",
        {"200": json_response(TOKENS, "signed in"), **error_responses(400, 401)},
        json_content({"type": "object", "required": ["email", "password"],
                      "properties": {"email": {"type": "string"},
                                     "password": {"type": "string"},
                                     "totp": {"type": "string"}}}))),
    # The body's refresh token is the credential of these two.
    Route("/api/v1/auth/refresh", http.RefreshHandler, post=Operation(
        PUBLIC, "new tokens from a refresh token",
        {"200": json_response(TOKENS, "refreshed (the old refresh token is spent; using it "
                                      "again revokes the sign-in)"),
         **error_responses(400, 401)},
        json_content({"type": "object", "required": ["refresh_token"],
                      "properties": {"refresh_token": {"type": "string"}}}))),
    Route("/api/v1/auth/logout", http.LogoutHandler, post=Operation(
        PUBLIC, "end a sign-in: its refresh token in the body, or its access token as bearer",
        {"200": json_response(OBJECT, "signed out"), **error_responses(400, 401)},
        json_content({"type": "object",
                      "properties": {"refresh_token": {"type": "string"}}}))),
    Route("/api/v1/me", http.MeHandler, get=Operation(
        AGENTS, "the signed-in agent",
        {"200": json_response(AGENT, "agent"), **error_responses(401)})),
    Route("/api/v1/me/totp", http.TotpHandler, post=Operation(
        AGENTS, "start two-factor enrolment: secret, otpauth URI, QR code",
        {"200": json_response({"type": "object", "properties": {
            "secret": {"type": "string"}, "otpauth_uri": {"type": "string"},
            "qr_svg": {"type": "string", "description": "data: URI"},
            "expires_in": {"type": "integer"}}}, "enrolment"),
         **error_responses(401, 403)})),
    Route("/api/v1/me/totp/confirm", http.TotpConfirmHandler, post=Operation(
        AGENTS, "finish enrolment with the code the authenticator shows",
        {"200": json_response(OBJECT, "on"), **error_responses(400, 401, 403, 409)},
        CODE_BODY)),
    Route("/api/v1/me/totp/disable", http.TotpDisableHandler, post=Operation(
        AGENTS, "turn two-factor sign-in off (needs a current code)",
        {"200": json_response(OBJECT, "off"), **error_responses(400, 401, 403, 409)},
        CODE_BODY)),
    Route("/api/v1/conversations/{id}/messages", http.MessagesHandler,
          params={"id": CONVERSATION_ID}, get=Operation(
              AGENTS | VISITOR, "history in seq order (agent token, or the visitor's own token)",
              {"200": json_response({"type": "object", "properties": {
                  "messages": {"type": "array",
                               "items": {"$ref": "#/components/schemas/Message"}}}},
                  "messages"), **error_responses(400, 401, 403, 404)},
              parameters=(
                  _id_param(),
                  {"name": "after_seq", "in": "query", "schema": {"type": "integer"}},
                  {"name": "before_seq", "in": "query", "schema": {"type": "integer"},
                   "description": "scroll back: the newest `limit` messages before this seq"},
                  _LIMIT))),
    # issue 14: the inbox, labels, contacts, search
    Route("/api/v1/conversations", http.ConversationsHandler, get=Operation(
        AGENTS, "a view of conversations, most recently updated first (cursor paging)",
        {"200": json_response(CONVERSATION_PAGE, "a page"), **error_responses(400, 401)},
        parameters=_VIEW_PARAMS)),
    Route("/api/v1/conversations/{id}", http.ConversationHandler,
          params={"id": CONVERSATION_ID}, get=Operation(
              AGENTS, "one conversation with its visitor's context",
              {"200": json_response(CONVERSATION, "the conversation"),
               **error_responses(401, 403, 404)}, parameters=(_id_param(),))),
    Route("/api/v1/conversations/{id}/labels", http.LabelsHandler,
          params={"id": CONVERSATION_ID}, put=Operation(
              AGENTS, "replace the conversation's labels",
              {"200": json_response(OBJECT, "the labels now"),
               **error_responses(400, 401, 403, 404)},
              json_content({"type": "object", "required": ["labels"], "properties": {
                  "labels": {"type": "array", "maxItems": 20, "items": {
                      "type": "string", "maxLength": 32}}}}),
              parameters=(_id_param(),))),
    Route("/api/v1/contacts/{id}", http.ContactHandler, params={"id": VISITOR_ID},
          get=Operation(
              AGENTS, "a contact: who, context, fields, past conversations",
              {"200": json_response(CONTACT, "the contact"),
               **error_responses(401, 403, 404)}, parameters=(_id_param(),))),
    Route("/api/v1/search", http.SearchHandler, get=Operation(
        AGENTS, "full-text search over messages and contacts the caller may see",
        {"200": json_response(SEARCH_RESULTS, "results, best first"),
         **error_responses(400, 401)},
        parameters=({"name": "q", "in": "query", "required": True,
                     "schema": {"type": "string", "maxLength": 200}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100}}))),
    Route("/api/v1/reports/summary", http.ReportSummaryHandler, get=Operation(
        SUPERVISORS, "first response and resolution p50/p90, volume by hour, rating",
        {"200": json_response(REPORT, "the summary"), **error_responses(400, 401, 403)},
        parameters=_REPORT_PARAMS)),
    Route("/api/v1/reports/by_hour.svg", http.ReportChartHandler, get=Operation(
        SUPERVISORS, "the volume by hour as an SVG bar chart (the reports page shows it)",
        {"200": {"description": "image/svg+xml"}, **error_responses(400, 401, 403)},
        parameters=_REPORT_PARAMS)),
    Route("/api/v1/agents", http.AgentsHandler, get=Operation(
        AGENTS, "agents with status and load",
        {"200": json_response(OBJECT, "agents"), **error_responses(401)})),
    Route("/api/v1/agents/{id}/role", http.AgentRoleHandler, params={"id": AGENT_ID},
          post=Operation(
              ADMINS, "change an agent's role (admin)",
              {"200": json_response(OBJECT, "changed"),
               **error_responses(400, 401, 403, 404, 409)},
              json_content({"type": "object", "required": ["role"], "properties": {
                  "role": {"enum": ["agent", "supervisor", "admin"]}}}),
              parameters=(_id_param(AGENT_ID),))),
    Route("/api/v1/canned", http.CannedHandler, get=Operation(
        AGENTS, "canned responses",
        {"200": json_response(OBJECT, "canned"), **error_responses(401)})),
    Route("/api/v1/supervisor/overview", http.SupervisorHandler, get=Operation(
        SUPERVISORS, "agents, waiting queues per pool, live counts (supervisor/admin)",
        {"200": json_response(OBJECT, "overview"), **error_responses(401, 403)})),
    Route("/api/v1/audit", http.AuditHandler, get=Operation(
        ADMINS, "the audit log, newest first (admin)",
        {"200": json_response({"type": "object", "properties": {
            "entries": {"type": "array", "items": AUDIT_ENTRY}}}, "entries"),
         **error_responses(400, 401, 403)},
        parameters=(
            _LIMIT,
            {"name": "before_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "action", "in": "query", "schema": {"type": "string"},
             "description": "an action or prefix: auth., 2fa., agent., conversation."}))),
    # Sockets: the token opens one of them, then chatnode.access.WS decides per frame.
    Route("/ws/visitor", websockets.VisitorSocket),
    Route("/ws/agent", websockets.AgentSocket),
)

# (method, OpenAPI path) -> who may call it; the table tests/test_security.py walks.
REST: dict[tuple[str, str], frozenset[str]] = {
    (method, route.path): op.access
    for route in ROUTES for method, op in route.operations.items()}


def url_specs(deps: dict[str, Any], ws_deps: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Tornado routes of :data:`ROUTES`: REST handlers get ``deps``, sockets ``ws_deps``.

    Each REST handler learns its OpenAPI path and access rules here, from its entry, so they
    are written once (a handler never bound keeps no rules and refuses every call)."""
    specs: list[tuple[str, Any, Any]] = []
    for route in ROUTES:
        if issubclass(route.handler, http.JsonHandler):
            route.handler.route = route.path
            route.handler.access_rules = {m: op.access for m, op in route.operations.items()}
        kwargs = ws_deps if issubclass(route.handler, WebSocketHandler) else deps
        specs.append((route.pattern, route.handler, kwargs))
    return specs

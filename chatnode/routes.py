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
from chatnode.access import ADMIN_OR_TOKEN, ADMINS, AGENTS, PUBLIC, SUPERVISORS, VISITOR, scope
from chatnode.schemas import (
    AGENT,
    ATTACHMENT,
    AUDIT_ENTRY,
    CANNED,
    CANNED_BODY,
    CODE_BODY,
    CONTACT,
    CONVERSATION,
    CONVERSATION_PAGE,
    DELIVERY,
    OBJECT,
    POST_MESSAGE,
    POSTED,
    REPORT,
    SEARCH_RESULTS,
    SITE_SETTINGS,
    TOKEN_BODY,
    TOKEN_CREATED,
    TOKENS,
    WEBHOOK_BODY,
    WEBHOOK_CREATED,
    WIDGET_CONFIG,
    error_responses,
    json_content,
    json_response,
)
from tidedesk.mail.links import LINK_CODE_TTL_SECS

# Path parameters: the regex Tornado matches (and the pattern the document gives for agents).
CONVERSATION_ID = "[0-9a-f]{1,32}"
AGENT_ID = "[0-9]{1,18}"
ATTACHMENT_ID = "[0-9a-f]{32}"
# API tokens, webhooks: uuid4 hex (shorter accepted, so a wrong id is a clear 404).
HEX_ID = "[0-9a-f]{1,32}"
SITE = "[a-z0-9][a-z0-9_-]{0,63}"
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
    delete: Operation | None = None

    @property
    def operations(self) -> dict[str, Operation]:
        """HTTP method -> operation, for the methods this route serves."""
        return {m: op for m, op in (("GET", self.get), ("POST", self.post), ("PUT", self.put),
                                    ("DELETE", self.delete)) if op is not None}

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
        "site": {"type": "string", "pattern": f"^{SITE}$", "default": "default"},
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
    {"name": "site", "in": "query", "schema": {"type": "string"},
     "description": "only this site's conversations"},
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

_ASSIGNED = {"type": "object", "required": ["conversation_id", "state", "agent_id"],
             "properties": {"conversation_id": {"type": "string"},
                            "state": {"enum": ["assigned"]}, "agent_id": {"type": "string"}}}
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
    # A reply mail's link carries a one-time code, never a token (tidedesk/mail/links.py).
    Route("/api/v1/visitors/mail-link", http.MailLinkHandler, post=Operation(
        PUBLIC, "trade a reply mail's one-time link code for the session of the visitor it "
        f"was mailed to (once, within {LINK_CODE_TTL_SECS // 86400} days; then 410 link_used / "
        "link_expired / link_unknown)",
        {"200": json_response({"type": "object",
                               "required": ["visitor_id", "conversation_id", "token"],
                               "properties": {"visitor_id": {"type": "string"},
                                              "conversation_id": {"type": "string"},
                                              "token": {"type": "string"}}}, "the session"),
         **error_responses(400, 410)},
        json_content({"type": "object", "required": ["code"],
                      "properties": {"code": {"type": "string"}}}))),
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
    Route("/api/v1/auth/theft", http.TheftReportHandler, post=Operation(
        PUBLIC, "report a refresh token spent by someone else (the console saw token_rotated "
        "and no tab of it holds the newer token): the sign-in ends everywhere, audited",
        {"200": json_response(OBJECT, "revoked"), **error_responses(400, 401)},
        json_content({"type": "object", "required": ["refresh_token"],
                      "properties": {"refresh_token": {"type": "string"}}}))),
    # A WebSocket URL carries this ticket, never the bearer token (URLs are logged).
    Route("/api/v1/ws-ticket", http.WsTicketHandler, post=Operation(
        AGENTS | VISITOR, "a one-time ticket for one WebSocket connect (30 s): "
        "/ws/agent?ticket= or /ws/visitor?ticket=",
        {"201": json_response({"type": "object", "required": ["ticket", "expires_in"],
                               "properties": {"ticket": {"type": "string"},
                                              "expires_in": {"type": "integer"}}}, "ticket"),
         **error_responses(401)})),
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
          params={"id": CONVERSATION_ID}, post=Operation(
              AGENTS | scope("messages:write"),
              "send a message (or, private, a note) as the WebSocket `message` does: 201 once "
              "durable, idempotent on `id` (agent who may write to it, or API token)",
              {"201": json_response(POSTED, "durable"),
               **error_responses(400, 401, 403, 404, 409, 503)},
              json_content(POST_MESSAGE), parameters=(_id_param(),)),
          get=Operation(
              AGENTS | VISITOR | scope("conversations:read"),
              "history in seq order (agent token, the visitor's own token, or API token)",
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
    # issue 13: the conversation lifecycle
    Route("/api/v1/conversations/{id}/take", http.TakeHandler, params={"id": CONVERSATION_ID},
          post=Operation(
              AGENTS, "take a waiting or offline chat of one of your pools",
              {"200": json_response(_ASSIGNED, "the caller owns it now"),
               **error_responses(401, 403, 404, 409)},
              parameters=(_id_param(),))),
    Route("/api/v1/conversations/{id}/assign", http.AssignHandler,
          params={"id": CONVERSATION_ID}, post=Operation(
              SUPERVISORS, "move a chat to an agent (at once) or a pool (by the routers)",
              {"200": json_response(_ASSIGNED, "the agent owns it now"),
               "202": json_response(OBJECT, "handed to the routers for that pool"),
               **error_responses(400, 401, 403, 404, 409)},
              json_content({"type": "object", "additionalProperties": False, "properties": {
                  "agent_id": {"type": "string"}, "pool": {"type": "string"}}}),
              parameters=(_id_param(),))),
    Route("/api/v1/tickets", http.TicketsHandler, get=Operation(
        AGENTS, "tickets (offline conversations) of your pools, newest first",
        {"200": json_response({"type": "object", "properties": {
            "tickets": {"type": "array", "items": OBJECT},
            "next_before_id": {"type": ["integer", "null"]}}}, "tickets"),
         **error_responses(400, 401)},
        parameters=(
            {"name": "status", "in": "query",
             "schema": {"enum": ["open", "pending", "solved", "all"]},
             "description": "default: open and pending"},
            _LIMIT,
            {"name": "before_id", "in": "query", "schema": {"type": "integer", "minimum": 1}}))),
    Route("/api/v1/visitors/contact", http.VisitorContactHandler, post=Operation(
        VISITOR, "the visitor leaves contact details (stored encrypted)",
        {"200": json_response(OBJECT, "saved"), **error_responses(400, 401)},
        json_content({"type": "object", "additionalProperties": False, "properties": {
            "name": {"type": "string", "maxLength": 120},
            "email": {"type": "string", "format": "email"},
            "phone": {"type": "string", "pattern": "^\\+?[0-9 ().\\-]{3,32}$"}}}))),
    # issue 13: the transcript by e-mail (the visitor's own conversation), and the rating
    Route("/api/v1/conversations/{id}/transcript", http.TranscriptHandler,
          params={"id": CONVERSATION_ID}, post=Operation(
              VISITOR, "mail the whole conversation to an address (queued in the outbox)",
              {"202": json_response(OBJECT, "queued"),
               **error_responses(400, 401, 403, 409, 429)},
              json_content({"type": "object", "required": ["email"],
                            "additionalProperties": False,
                            "properties": {"email": {"type": "string", "format": "email"}}}),
              parameters=(_id_param(),))),
    Route("/api/v1/conversations/{id}/rating", http.RatingHandler,
          params={"id": CONVERSATION_ID}, get=Operation(
              AGENTS, "the visitor's rating of the conversation, or null",
              {"200": json_response({"type": "object", "properties": {"rating": {
                  "type": ["object", "null"], "properties": {
                      "conversation_id": {"type": "string"}, "score": {"type": "integer"},
                      "comment": {"type": "string"}, "agent_id": {"type": ["string", "null"]},
                      "created_at": {"type": "number"}}}}}, "rating"),
               **error_responses(401, 403, 404)},
              parameters=(_id_param(),))),
    Route("/api/v1/conversations/{id}/handoff", http.HandoffHandler,
          params={"id": CONVERSATION_ID}, post=Operation(
              AGENTS | scope("messages:write"),
              "a bot hands the conversation to people (its site's bot pool, or `pool`); the "
              "visitor is told \"connecting you to a person\"; 409 when no bot holds it",
              {"200": json_response(OBJECT, "handed off"),
               **error_responses(400, 401, 403, 404, 409)},
              json_content({"type": "object", "additionalProperties": False,
                            "properties": {"pool": {"type": "string"}}}),
              parameters=(_id_param(),))),
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
    Route("/api/v1/agents/invite", http.InviteHandler, post=Operation(
        ADMINS, "invite an agent: a one-time link (`invite_url`, shown once) where they set "
                "their password (admin)",
        {"201": json_response(OBJECT, "invited"), **error_responses(400, 401, 403, 409)},
        json_content({"type": "object", "required": ["email"], "properties": {
            "email": {"type": "string"}, "name": {"type": "string"},
            "role": {"enum": ["agent", "supervisor", "admin"]},
            "pools": {"type": "array", "items": {"type": "string"}},
            "max_chats": {"type": "integer"}}}))),
    Route("/api/v1/auth/accept-invite", http.AcceptInviteHandler, post=Operation(
        PUBLIC, "an invited agent sets their password with the invitation's token",
        {"200": json_response(OBJECT, "signed up"), **error_responses(400, 401)},
        json_content({"type": "object", "required": ["token", "password"], "properties": {
            "token": {"type": "string"}, "password": {"type": "string", "minLength": 10}}}))),
    Route("/api/v1/agents/{id}", http.AgentHandler, params={"id": AGENT_ID}, put=Operation(
        ADMINS, "change an agent's name, pools, max_chats, or deactivate them (`active`: "
                "false closes their sockets and refuses their tokens at once) (admin)",
        {"200": json_response(OBJECT, "changed"), **error_responses(400, 401, 403, 404, 409)},
        json_content({"type": "object", "additionalProperties": False, "properties": {
            "name": {"type": "string", "maxLength": 120},
            "pools": {"type": "array", "items": {"type": "string"}},
            "max_chats": {"type": "integer", "minimum": 0, "maximum": 50},
            "active": {"type": "boolean"}}}),
        parameters=(_id_param(AGENT_ID),))),
    Route("/api/v1/agents/{id}/role", http.AgentRoleHandler, params={"id": AGENT_ID},
          post=Operation(
              ADMINS, "change an agent's role (admin)",
              {"200": json_response(OBJECT, "changed"),
               **error_responses(400, 401, 403, 404, 409)},
              json_content({"type": "object", "required": ["role"], "properties": {
                  "role": {"enum": ["agent", "supervisor", "admin"]}}}),
              parameters=(_id_param(AGENT_ID),))),
    Route("/api/v1/canned", http.CannedHandler, get=Operation(
        AGENTS | scope("conversations:read"),
        "canned responses: the shared ones and the caller's own (`personal`)",
        {"200": json_response(OBJECT, "canned"), **error_responses(401)}),
          post=Operation(
        AGENTS, "add a canned response: shared (admin) or `personal` (any agent, their own); "
                "a taken shortcut or an unknown {{variable}} is a 400",
        {"201": json_response(CANNED, "created"), **error_responses(400, 401, 403)},
        json_content(CANNED_BODY))),
    Route("/api/v1/canned/{id}", http.CannedItemHandler, params={"id": AGENT_ID},
          put=Operation(
              AGENTS, "change a canned response (shared: admin; personal: its owner)",
              {"200": json_response(CANNED, "changed"),
               **error_responses(400, 401, 403, 404)},
              json_content(CANNED_BODY), parameters=(_id_param(AGENT_ID),)),
          delete=Operation(
              AGENTS, "delete a canned response (shared: admin; personal: its owner)",
              {"200": json_response(OBJECT, "deleted"), **error_responses(401, 403, 404)},
              parameters=(_id_param(AGENT_ID),))),
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
    # Attachments (issue 15): upload (multipart, streamed), the file, its thumbnail, and
    # signed links for <img> and download anchors (which cannot send a bearer token).
    Route("/api/v1/attachments", http.AttachmentUploadHandler, post=Operation(
        AGENTS | VISITOR, "upload a file (multipart/form-data, field 'file'); 413 over the "
        "size limit (from Content-Length, before the body is read), 415 for a type not "
        "allowed or an image that does not decode",
        {"201": json_response(ATTACHMENT, "stored"),
         **error_responses(400, 401, 403, 408, 413, 415)},
        {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}}}})),
    Route("/api/v1/attachments/{id}", http.AttachmentHandler, params={"id": ATTACHMENT_ID},
          get=Operation(
              AGENTS | VISITOR, "the file (the conversation's visitor, agents who may see it, "
              "or a signed link: ?expires=&sig=); Range and ETag supported",
              {"200": {"description": "the bytes"}, "206": {"description": "a range"},
               **error_responses(401, 403, 404, 416)},
              parameters=(_id_param(ATTACHMENT_ID),))),
    Route("/api/v1/attachments/{id}/thumbnail", http.AttachmentThumbnailHandler,
          params={"id": ATTACHMENT_ID}, get=Operation(
              AGENTS | VISITOR, "an image's thumbnail (PNG, at most 320 px a side)",
              {"200": {"description": "PNG"}, **error_responses(401, 403, 404)},
              parameters=(_id_param(ATTACHMENT_ID),))),
    Route("/api/v1/attachments/{id}/link", http.AttachmentLinkHandler,
          params={"id": ATTACHMENT_ID}, get=Operation(
              AGENTS | VISITOR, "signed links to the file (and thumbnail), valid for minutes",
              {"200": json_response({"type": "object", "properties": {
                  "url": {"type": "string"}, "thumbnail_url": {"type": "string"},
                  "expires_in": {"type": "integer"}}}, "links"),
               **error_responses(401, 403, 404)},
              parameters=(_id_param(ATTACHMENT_ID),))),
    # A contact's data on request (issue 18; GET /api/v1/contacts/{id} itself is issue 14's).
    Route("/api/v1/contacts/{id}", http.ContactHandler, params={"id": VISITOR_ID},
          get=Operation(
              AGENTS, "a contact: who, context, fields, past conversations",
              {"200": json_response(CONTACT, "the contact"),
               **error_responses(401, 403, 404)}, parameters=(_id_param(VISITOR_ID),)),
          delete=Operation(
              ADMINS, "erase a contact: personal fields, message bodies (every shard) and "
              "recent history; the conversation skeleton stays for reports; audited (admin, "
              "with a second factor)",
              {"200": json_response({"type": "object", "properties": {
                  "erased": {"type": "string"}, "conversations": {"type": "integer"},
                  "steps": {"type": "object"}}}, "erased"),
               **error_responses(401, 403, 404)},
              parameters=(_id_param(CONVERSATION_ID),))),
    Route("/api/v1/contacts/{id}/export", http.ContactExportHandler,
          params={"id": CONVERSATION_ID}, get=Operation(
              SUPERVISORS, "everything stored about a contact, as JSON (audited)",
              {"200": json_response({"type": "object", "properties": {
                  "contact": OBJECT, "conversations": {"type": "array", "items": OBJECT},
                  "exported_at": {"type": "number"}}}, "the contact's data"),
               **error_responses(401, 403, 404)},
              parameters=(_id_param(CONVERSATION_ID),))),
    Route("/api/v1/api-tokens", http.ApiTokensHandler, get=Operation(
        ADMIN_OR_TOKEN, "live API tokens (never the tokens themselves)",
        {"200": json_response(OBJECT, "tokens"), **error_responses(401, 403)}),
          post=Operation(
        ADMIN_OR_TOKEN, "create an API token: the token is in this answer only",
        {"201": json_response(TOKEN_CREATED, "created"), **error_responses(400, 401, 403)},
        json_content(TOKEN_BODY))),
    Route("/api/v1/api-tokens/{id}", http.ApiTokenHandler, params={"id": HEX_ID},
          delete=Operation(
              ADMIN_OR_TOKEN, "revoke an API token (refused at once on every node)",
              {"200": json_response(OBJECT, "revoked"), **error_responses(401, 403, 404)},
              parameters=(_id_param(HEX_ID),))),
    Route("/api/v1/webhooks", http.WebhooksHandler, get=Operation(
        ADMIN_OR_TOKEN, "webhooks (with `failing` when deliveries gave up)",
        {"200": json_response(OBJECT, "webhooks"), **error_responses(401, 403)}),
          post=Operation(
        ADMIN_OR_TOKEN, "add a webhook: the signing secret is in this answer only",
        {"201": json_response(WEBHOOK_CREATED, "created"), **error_responses(400, 401, 403)},
        json_content(WEBHOOK_BODY))),
    Route("/api/v1/webhooks/{id}", http.WebhookHandler, params={"id": HEX_ID},
          delete=Operation(
              ADMIN_OR_TOKEN, "delete a webhook (its pending deliveries are dropped)",
              {"200": json_response(OBJECT, "deleted"), **error_responses(401, 403, 404)},
              parameters=(_id_param(HEX_ID),))),
    Route("/api/v1/webhooks/{id}/deliveries", http.WebhookDeliveriesHandler,
          params={"id": HEX_ID}, get=Operation(
              ADMIN_OR_TOKEN, "the delivery log, newest first: status, attempts, code, latency",
              {"200": json_response({"type": "object", "properties": {
                  "deliveries": {"type": "array", "items": DELIVERY}}}, "deliveries"),
               **error_responses(400, 401, 403, 404)},
              parameters=(_id_param(HEX_ID), _LIMIT))),
    Route("/api/v1/webhooks/{id}/resend", http.WebhookResendHandler, params={"id": HEX_ID},
          post=Operation(
              ADMIN_OR_TOKEN, "send a delivery again now (\"send again\")",
              {"200": json_response(OBJECT, "queued"), **error_responses(400, 401, 403, 404)},
              json_content({"type": "object", "required": ["delivery_id"], "properties": {
                  "delivery_id": {"type": "string"}}}),
              parameters=(_id_param(HEX_ID),))),
    Route("/api/v1/sites", http.SitesHandler, get=Operation(
        ADMIN_OR_TOKEN, "the sites (shops) of this installation",
        {"200": json_response(OBJECT, "sites"), **error_responses(401, 403)})),
    Route("/api/v1/sites/{id}", http.SiteHandler, params={"id": SITE}, get=Operation(
        ADMIN_OR_TOKEN, "a site's settings: widget, hours, routing",
        {"200": json_response(SITE_SETTINGS, "site"), **error_responses(400, 401, 403, 404)},
        parameters=(_id_param(SITE),)),
          put=Operation(
        ADMIN_OR_TOKEN, "create or change a site (any subset of the fields; the others keep "
                        "their values). `routing` may be the routing file's YAML as a string",
        {"200": json_response(SITE_SETTINGS, "saved"), **error_responses(400, 401, 403)},
        json_content(SITE_SETTINGS), parameters=(_id_param(SITE),)),
          delete=Operation(
        ADMIN_OR_TOKEN, "delete a site: its widget then shows \"chat unavailable\"",
        {"200": json_response(OBJECT, "deleted"), **error_responses(400, 401, 403, 404)},
        parameters=(_id_param(SITE),))),
    Route("/api/v1/sites/{id}/widget-config", http.WidgetConfigHandler, params={"id": SITE},
          get=Operation(
              PUBLIC, "what the site's widget shows (public, cacheable for 30 s); 404 "
                      "`site_unavailable` for an unknown or deleted site",
              {"200": json_response(WIDGET_CONFIG, "config"), **error_responses(400, 404)},
              parameters=(_id_param(SITE),))),
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
    are written once (a handler never bound keeps no rules and refuses every call).

    The sockets come first: Tornado tries the patterns in order, and a connect walked the
    whole API's before reaching ``/ws/visitor`` (10.4 µs a lookup, 1.5 with the sockets first;
    ~1% of the chat node's samples in P1, issue 17). No two patterns match the same path, so
    the order changes nothing else."""
    sockets: list[tuple[str, Any, Any]] = []
    specs: list[tuple[str, Any, Any]] = []
    for route in ROUTES:
        if issubclass(route.handler, http.JsonHandler):
            route.handler.route = route.path
            route.handler.access_rules = {m: op.access for m, op in route.operations.items()}
        if issubclass(route.handler, WebSocketHandler):
            sockets.append((route.pattern, route.handler, ws_deps))
        else:
            specs.append((route.pattern, route.handler, deps))
    return sockets + specs

"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``.

``tests/test_openapi.py`` checks that every REST route of the application is described here
and that every path here is routed, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from chatnode import access
from tidedesk import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ERROR, "error; the message says what to change") for c in codes}


_MESSAGE = {
    "type": "object",
    "required": ["type", "conversation_id", "seq", "id", "from", "body", "ts"],
    "properties": {
        "type": {"const": "message"}, "conversation_id": {"type": "string"},
        "seq": {"type": "integer"}, "id": {"type": "string"},
        "from": {"enum": ["visitor", "agent", "system"]}, "body": {"type": "string"},
        "ts": {"type": "number"}, "name": {"type": "string"}, "private": {"type": "boolean"},
    },
}
_TOKENS = {
    "type": "object", "required": ["access_token", "refresh_token", "expires_in"],
    "properties": {"access_token": {"type": "string"}, "refresh_token": {"type": "string"},
                   "expires_in": {"type": "integer"}},
}
_AGENT = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                   "role": {"enum": ["agent", "supervisor", "admin"]},
                   "status": {"enum": ["online", "away", "offline"]},
                   "open_chats": {"type": "integer"}, "max_chats": {"type": "integer"},
                   "pools": {"type": "array", "items": {"type": "string"}}},
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


_CODE_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}}}}}
_AUDIT_ENTRY = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "ts": {"type": "number"},
                   "actor": {"type": "string"}, "action": {"type": "string"},
                   "target": {"type": "string"}, "detail": {"type": "object"}},
}


def openapi_document() -> dict[str, Any]:
    """The document, each operation marked with who may call it (``x-tidedesk-access``, from
    :data:`chatnode.access.REST`) and a 429 answer where rate limits apply."""
    doc = _document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            rule = access.REST[(method.upper(), path)]
            op["x-tidedesk-access"] = access.describe(rule)
            if path not in ("/healthz", "/readyz", "/metrics"):
                op["responses"].update(_errors(429))
    return doc


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tidedesk chat node", "version": __version__,
                 "description": "REST part of the public contract; WebSocket frames are "
                                "described in PROTOCOL.md and docs/protocol.md."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["code", "message"],
                              "properties": {"code": {"type": "string"},
                                             "message": {"type": "string"}}}}},
                "Message": _MESSAGE, "Tokens": _TOKENS, "Agent": _AGENT,
            },
        },
        "paths": {
            "/healthz": {"get": {"summary": "200 while the process runs",
                                 "responses": {"200": _json({"type": "object"}, "alive")}}},
            "/readyz": {"get": {"summary": "200 when it takes traffic, 503 starting/draining",
                                "responses": {"200": _json({"type": "object"}, "ready"),
                                              "503": _json({"type": "object"}, "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus text format",
                                 "responses": {"200": {"description": "metrics"}}}},
            "/api/v1/openapi.json": {"get": {"summary": "this document",
                                             "responses": {"200": _json({"type": "object"},
                                                                        "OpenAPI")}}},
            "/api/v1/visitors": {"post": {
                "summary": "create an anonymous visitor session",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "name": {"type": "string", "maxLength": 120},
                        "email": {"type": "string", "format": "email"},
                        "phone": {"type": "string", "pattern": "^\\+?[0-9 ().\\-]{3,32}$"},
                        "tags": {"type": "array", "maxItems": 20,
                                 "items": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"}},
                        "locale": {"enum": ["en", "zh-CN"]}}}}}},
                "responses": {"201": _json({"type": "object", "required": ["visitor_id", "token"],
                                            "properties": {"visitor_id": {"type": "string"},
                                                           "token": {"type": "string"}}},
                                           "created"), **_errors(400, 413)}}},
            "/api/v1/auth/login": {"post": {
                "summary": "agent sign-in (password, then TOTP when enabled)",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["email", "password"],
                    "properties": {"email": {"type": "string"}, "password": {"type": "string"},
                                   "totp": {"type": "string"}}}}}},
                "responses": {"200": _json(_TOKENS, "signed in"), **_errors(400, 401)}}},
            "/api/v1/auth/refresh": {"post": {
                "summary": "new tokens from a refresh token",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["refresh_token"],
                    "properties": {"refresh_token": {"type": "string"}}}}}},
                "responses": {"200": _json(_TOKENS, "refreshed (the old refresh token is spent; "
                                                    "using it again revokes the sign-in)"),
                              **_errors(400, 401)}}},
            "/api/v1/auth/logout": {"post": {
                "summary": "end a sign-in: its refresh token in the body, or its access token "
                           "as bearer",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"refresh_token": {"type": "string"}}}}}},
                "responses": {"200": _json({"type": "object"}, "signed out"),
                              **_errors(400, 401)}}},
            "/api/v1/me/totp": {"post": {
                "summary": "start two-factor enrolment: secret, otpauth URI, QR code",
                "security": _BEARER,
                "responses": {"200": _json({"type": "object", "properties": {
                    "secret": {"type": "string"}, "otpauth_uri": {"type": "string"},
                    "qr_svg": {"type": "string", "description": "data: URI"},
                    "expires_in": {"type": "integer"}}}, "enrolment"),
                    **_errors(401, 403)}}},
            "/api/v1/me/totp/disable": {"post": {
                "summary": "turn two-factor sign-in off (needs a current code)",
                "security": _BEARER, "requestBody": _CODE_BODY,
                "responses": {"200": _json({"type": "object"}, "off"),
                              **_errors(400, 401, 403, 409)}}},
            "/api/v1/me/totp/confirm": {"post": {
                "summary": "finish enrolment with the code the authenticator shows",
                "security": _BEARER, "requestBody": _CODE_BODY,
                "responses": {"200": _json({"type": "object"}, "on"),
                              **_errors(400, 401, 403, 409)}}},
            "/api/v1/me": {"get": {"summary": "the signed-in agent", "security": _BEARER,
                                   "responses": {"200": _json(_AGENT, "agent"),
                                                 **_errors(401)}}},
            "/api/v1/conversations/{id}/messages": {"get": {
                "summary": "history in seq order (agent token, or the visitor's own token)",
                "security": _BEARER,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "after_seq", "in": "query", "schema": {"type": "integer"}},
                    {"name": "before_seq", "in": "query", "schema": {"type": "integer"},
                     "description": "scroll back: the newest `limit` messages before this seq"},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": {"200": _json({"type": "object", "properties": {
                    "messages": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/Message"}}}},
                    "messages"), **_errors(400, 401, 403, 404)}}},
            "/api/v1/agents": {"get": {"summary": "agents with status and load",
                                       "security": _BEARER,
                                       "responses": {"200": _json({"type": "object"}, "agents"),
                                                     **_errors(401)}}},
            "/api/v1/agents/{id}/role": {"post": {
                "summary": "change an agent's role (admin)", "security": _BEARER,
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["role"],
                    "properties": {"role": {"enum": ["agent", "supervisor", "admin"]}}}}}},
                "responses": {"200": _json({"type": "object"}, "changed"),
                              **_errors(400, 401, 403, 404, 409)}}},
            "/api/v1/audit": {"get": {
                "summary": "the audit log, newest first (admin)", "security": _BEARER,
                "parameters": [
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "before_id", "in": "query",
                     "schema": {"type": "integer", "minimum": 1}},
                    {"name": "action", "in": "query", "schema": {"type": "string"},
                     "description": "an action or prefix: auth., 2fa., agent., conversation."}],
                "responses": {"200": _json({"type": "object", "properties": {
                    "entries": {"type": "array", "items": _AUDIT_ENTRY}}}, "entries"),
                    **_errors(400, 401, 403)}}},
            "/api/v1/canned": {"get": {"summary": "canned responses", "security": _BEARER,
                                       "responses": {"200": _json({"type": "object"}, "canned"),
                                                     **_errors(401)}}},
            "/api/v1/supervisor/overview": {"get": {
                "summary": "agents, waiting queues per pool, live counts (supervisor/admin)",
                "security": _BEARER,
                "responses": {"200": _json({"type": "object"}, "overview"),
                              **_errors(401, 403)}}},
        },
    }

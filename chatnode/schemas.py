"""JSON Schemas of the REST bodies, and the response shapes the route table's operations use.

Pure data: ``chatnode/routes.py`` builds its OpenAPI operations from these, and
``chatnode/openapi.py`` publishes the named ones as ``components/schemas``.
"""

from __future__ import annotations

from typing import Any

ERROR_REF = {"$ref": "#/components/schemas/Error"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def json_content(schema: Any) -> dict[str, Any]:
    """A request body (or the content of a response) that is JSON of ``schema``."""
    return {"content": {"application/json": {"schema": schema}}}


def json_response(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, **json_content(schema)}


def error_responses(*codes: int) -> dict[str, Any]:
    """The error answers of an operation, keyed by status code."""
    return {str(c): json_response(ERROR_REF, "error; the message says what to change")
            for c in codes}


OBJECT = {"type": "object"}
ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "object", "required": ["code", "message"],
              "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
MESSAGE = {
    "type": "object",
    "required": ["type", "conversation_id", "seq", "id", "from", "body", "ts"],
    "properties": {
        "type": {"const": "message"}, "conversation_id": {"type": "string"},
        "seq": {"type": "integer"}, "id": {"type": "string"},
        "from": {"enum": ["visitor", "agent", "system"]}, "body": {"type": "string"},
        "ts": {"type": "number"}, "name": {"type": "string"}, "private": {"type": "boolean"},
        "attachments": {"type": "array", "items": {"$ref": "#/components/schemas/Attachment"}},
    },
}
ATTACHMENT = {
    "type": "object", "required": ["id", "name", "content_type", "size", "url"],
    "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                   "content_type": {"type": "string"}, "size": {"type": "integer"},
                   "url": {"type": "string"}},
}
TOKENS = {
    "type": "object", "required": ["access_token", "refresh_token", "expires_in"],
    "properties": {"access_token": {"type": "string"}, "refresh_token": {"type": "string"},
                   "expires_in": {"type": "integer"}},
}
AGENT = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                   "role": {"enum": ["agent", "supervisor", "admin"]},
                   "status": {"enum": ["online", "away", "offline"]},
                   "open_chats": {"type": "integer"}, "max_chats": {"type": "integer"},
                   "pools": {"type": "array", "items": {"type": "string"}}},
}
CODE_BODY = json_content({"type": "object", "required": ["code"],
                          "properties": {"code": {"type": "string"}}})
AUDIT_ENTRY = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "ts": {"type": "number"},
                   "actor": {"type": "string"}, "action": {"type": "string"},
                   "target": {"type": "string"}, "detail": {"type": "object"}},
}
# Issue 16: REST messages, API tokens, webhooks.
POST_MESSAGE = {"type": "object", "required": ["id", "body"], "additionalProperties": False,
                "properties": {"id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
                               "body": {"type": "string", "minLength": 1},
                               "private": {"type": "boolean"}}}
POSTED = {"type": "object", "required": ["id", "seq"],
          "properties": {"id": {"type": "string"}, "seq": {"type": "integer"}}}
TOKEN_BODY = {"type": "object", "required": ["name", "scopes"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64},
                             "scopes": {"type": "array", "minItems": 1, "items": {"enum": [
                                 "conversations:read", "messages:write", "contacts:read",
                                 "contacts:write", "admin"]}}}}
TOKEN_CREATED = {"type": "object", "required": ["id", "token"],
                 "properties": {"id": {"type": "string"}, "token": {"type": "string"},
                                "name": {"type": "string"},
                                "scopes": {"type": "array", "items": {"type": "string"}}}}
WEBHOOK_BODY = {"type": "object", "required": ["url", "events"], "additionalProperties": False,
                "properties": {"url": {"type": "string", "format": "uri"},
                               "events": {"type": "array", "minItems": 1, "items": {"enum": [
                                   "conversation.created", "message.created",
                                   "conversation.assigned", "conversation.closed",
                                   "rating.created", "ticket.created", "ticket.updated"]}}}}
WEBHOOK_CREATED = {"type": "object", "required": ["id", "secret"],
                   "properties": {"id": {"type": "string"}, "secret": {"type": "string"},
                                  "url": {"type": "string"},
                                  "events": {"type": "array", "items": {"type": "string"}}}}
DELIVERY = {"type": "object", "properties": {
    "id": {"type": "string"}, "event_id": {"type": "string"}, "event": {"type": "string"},
    "ts": {"type": "number"}, "status": {"enum": ["pending", "delivered", "failed"]},
    "attempts": {"type": "integer"}, "next_at": {"type": "number"},
    "code": {"type": ["integer", "null"]}, "latency_ms": {"type": ["integer", "null"]},
    "error": {"type": "string"}, "created_at": {"type": "number"},
    "updated_at": {"type": "number"}}}
_HOURS = {"type": ["object", "null"], "properties": {
    "timezone": {"type": "string", "description": "IANA name, e.g. Europe/Berlin"},
    "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat",
                                                 "sun"]}},
    "open": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"},
    "close": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"},
    "holidays": {"type": "array", "items": {"type": "string", "format": "date"}}}}
_PRECHAT = {"type": "array", "maxItems": 10, "items": {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9_]{1,32}$"}, "label": {"type": "string"},
    "type": {"enum": ["text", "email", "phone"]}, "required": {"type": "boolean"}}}}
SITE_SETTINGS = {"type": "object", "additionalProperties": False, "properties": {
    "site": {"type": "string", "readOnly": True},
    "name": {"type": "string", "maxLength": 120},
    "color": {"type": "string", "pattern": "^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"},
    "position": {"enum": ["bottom-right", "bottom-left"]},
    "greeting": {"type": "string", "maxLength": 500},
    "offline_message": {"type": "string", "maxLength": 500},
    "prechat_fields": _PRECHAT,
    "languages": {"type": "array", "items": {"enum": ["en", "zh-CN"]}},
    "business_hours": _HOURS,
    "routing": {"type": ["object", "string", "null"],
                "description": "the routing file's rules and vip_tags (mapping or YAML)"}}}
WIDGET_CONFIG = {"type": "object", "properties": {
    "site": {"type": "string"}, "name": {"type": "string"}, "color": {"type": "string"},
    "position": {"type": "string"}, "greeting": {"type": "string"},
    "offline_message": {"type": "string"}, "prechat_fields": _PRECHAT,
    "languages": {"type": "array", "items": {"type": "string"}},
    "open": {"type": "boolean", "description": "inside business hours now"}}}
CANNED_BODY = {"type": "object", "additionalProperties": False, "properties": {
    "shortcut": {"type": "string", "pattern": "^/?[a-z0-9_-]{1,32}$"},
    "body": {"type": "string", "maxLength": 2000,
             "description": "may hold {{visitor.name}}, {{visitor.email}}, {{agent.name}}"},
    "personal": {"type": "boolean", "description": "POST only: the caller's own"}}}
CANNED = {"type": "object", "properties": {
    "id": {"type": "integer"}, "shortcut": {"type": "string"}, "body": {"type": "string"},
    "personal": {"type": "boolean"}}}
# What components/schemas names; operations refer to them as {"$ref": ...}.
NAMED = {"Error": ERROR, "Message": MESSAGE, "Tokens": TOKENS, "Agent": AGENT,
         "Attachment": ATTACHMENT}


# issue 14: the inbox
CONVERSATION: dict[str, Any] = {"type": "object", "properties": {
    "id": {"type": "string"}, "state": {"type": "string"}, "pool": {"type": "string"},
    "site": {"type": "string"}, "agent_id": {"type": ["string", "null"]},
    "visitor": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "email": {"type": ["string", "null"]}}},
    "labels": {"type": "array", "items": {"type": "string"}},
    "last_message": {"oneOf": [{"$ref": "#/components/schemas/Message"}, {"type": "null"}]},
    "unread": {"type": "integer", "description": "visitor messages since the last agent reply"},
    "created_at": {"type": "number"}, "updated_at": {"type": "number"},
    "context": {"type": "object", "description": "GET of one conversation only"},
    "rating": {"description": "GET of one conversation only; null without a rating"}}}
CONVERSATION_PAGE: dict[str, Any] = {"type": "object", "properties": {
    "conversations": {"type": "array", "items": CONVERSATION},
    "next_cursor": {"type": ["string", "null"]}}}
CONTACT: dict[str, Any] = {"type": "object", "properties": {
    "id": {"type": "string"}, "name": {"type": "string"}, "email": {"type": ["string", "null"]},
    "phone": {"type": ["string", "null"]}, "tags": {"type": "array"},
    "fields": {"type": "object"}, "context": {"type": "object"},
    "identified": {"type": "boolean"}, "conversations": {"type": "array"}}}
SEARCH_RESULTS: dict[str, Any] = {"type": "object", "properties": {
    "messages": {"type": "array", "items": {"type": "object", "properties": {
        "conversation_id": {"type": "string"}, "seq": {"type": "integer"},
        "from": {"type": "string"}, "body": {"type": "string"}, "ts": {"type": "number"},
        "private": {"type": "boolean"}, "snippet": {"type": "string"},
        "highlights": {"type": "array", "description": "[start, end) of each match in "
                       "snippet"}}}},
    "contacts": {"type": "array", "items": {"type": "object"}}}}
REPORT: dict[str, Any] = {"type": "object", "properties": {
    "conversations": {"type": "integer"},
    "first_response_s": {"type": "object", "properties": {
        "p50": {"type": ["number", "null"]}, "p90": {"type": ["number", "null"]}}},
    "resolution_s": {"type": "object", "properties": {
        "p50": {"type": ["number", "null"]}, "p90": {"type": ["number", "null"]}}},
    "rating": {"type": "object", "properties": {
        "average": {"type": ["number", "null"]}, "count": {"type": "integer"}}},
    "by_hour": {"type": "array", "items": {"type": "object", "properties": {
        "hour": {"type": "integer"}, "conversations": {"type": "integer"}}}},
    "from": {"type": "number"}, "to": {"type": "number"}}}

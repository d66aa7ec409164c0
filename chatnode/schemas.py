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
    },
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
# What components/schemas names; operations refer to them as {"$ref": ...}.
NAMED = {"Error": ERROR, "Message": MESSAGE, "Tokens": TOKENS, "Agent": AGENT}


# issue 14: the inbox
CONVERSATION: dict[str, Any] = {"type": "object", "properties": {
    "id": {"type": "string"}, "state": {"type": "string"}, "pool": {"type": "string"},
    "agent_id": {"type": ["string", "null"]},
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

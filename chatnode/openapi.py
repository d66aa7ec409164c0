"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``, built from the route table.

Every path and operation comes from :data:`chatnode.routes.ROUTES`, so the document, the
Tornado routes and the access rules cannot drift apart (``tests/test_routes.py``).
"""

from __future__ import annotations

from typing import Any

from chatnode import access
from chatnode.routes import ROUTES, Operation
from chatnode.schemas import BEARER, NAMED, error_responses
from tidedesk import __version__


def openapi_document() -> dict[str, Any]:
    """The document, each operation marked with who may call it (``x-tidedesk-access``, its
    rule in the route table), a bearer requirement unless it is public, and a 429 answer where
    rate limits apply."""
    paths: dict[str, Any] = {}
    for route in ROUTES:
        for method, op in route.operations.items():
            paths.setdefault(route.path, {})[method.lower()] = _operation(
                op, rate_limited=route.rate_limited)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tidedesk chat node", "version": __version__,
                 "description": "REST part of the public contract; WebSocket frames are "
                                "described in docs/protocol.md."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": dict(NAMED),
        },
        "paths": paths,
    }


def _operation(op: Operation, *, rate_limited: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary}
    if "public" not in op.access:
        out["security"] = BEARER
    if op.parameters:
        out["parameters"] = [dict(p) for p in op.parameters]
    if op.request_body is not None:
        out["requestBody"] = dict(op.request_body)
    out["responses"] = dict(op.responses)
    if rate_limited:
        out["responses"].update(error_responses(429))
    out["x-tidedesk-access"] = access.describe(op.access)
    return out

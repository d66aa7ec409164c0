"""Who may call what: one table for every REST endpoint and every WebSocket action (pure).

The handlers enforce it (``chatnode/http.py`` in ``prepare``, ``chatnode/websockets.py`` per
frame); the OpenAPI document prints it; ``tests/test_security.py`` walks it row by row. A REST
route with no row here is refused with 403 (fail closed), so a new endpoint cannot be forgotten.

Who: ``public`` (no token needed), ``visitor`` (a visitor token), or an agent role from
:data:`tidedesk.auth.ROLES`. Ownership (a visitor's own conversation, an agent's assigned chats)
is checked by the service on top of this.
"""

from __future__ import annotations

from tidedesk.auth import ROLES

PUBLIC = frozenset({"public"})
VISITOR = frozenset({"visitor"})
AGENTS = frozenset(ROLES)
SUPERVISORS = frozenset({"supervisor", "admin"})
ADMINS = frozenset({"admin"})

# (method, OpenAPI path) -> who may call it.
REST: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/v1/openapi.json"): PUBLIC,
    ("POST", "/api/v1/visitors"): PUBLIC,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    # The body's refresh token is the credential of these two.
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): PUBLIC,
    ("GET", "/api/v1/me"): AGENTS,
    ("POST", "/api/v1/me/totp"): AGENTS,
    ("POST", "/api/v1/me/totp/confirm"): AGENTS,
    ("POST", "/api/v1/me/totp/disable"): AGENTS,
    ("GET", "/api/v1/conversations/{id}/messages"): AGENTS | VISITOR,
    ("GET", "/api/v1/agents"): AGENTS,
    ("POST", "/api/v1/agents/{id}/role"): ADMINS,
    ("GET", "/api/v1/canned"): AGENTS,
    ("GET", "/api/v1/supervisor/overview"): SUPERVISORS,
    ("GET", "/api/v1/audit"): ADMINS,
}

# (socket, frame type) -> who may send it. A visitor token opens only /ws/visitor and an agent
# access token only /ws/agent (close 4401 otherwise); this table then decides per frame.
WS: dict[tuple[str, str], frozenset[str]] = {
    **{("visitor", kind): VISITOR for kind in ("message", "resume", "typing", "read", "ping")},
    **{("agent", kind): AGENTS for kind in ("message", "note", "resume", "typing", "read",
                                            "status", "close", "ping")},
    # Moving a chat to another agent or pool changes who sees a customer's words: audited, and
    # any agent may hand over their own chat; supervisors may move anyone's.
    ("agent", "transfer"): AGENTS,
}


def allowed(rule: frozenset[str] | None, who: str) -> bool:
    """``who`` is ``public``, ``visitor`` or an agent role."""
    if rule is None:
        return False
    return "public" in rule or who in rule


def describe(rule: frozenset[str]) -> str:
    """For the OpenAPI document and error messages: 'supervisor or admin'."""
    order = ("public", "visitor", *ROLES)
    return " or ".join(w for w in order if w in rule)

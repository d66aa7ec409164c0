"""Who may call what: the rule sets, the table of every WebSocket action, and the checks (pure).

A REST endpoint's rule is one of these sets, given per method in its entry of the route table
(``chatnode/routes.py``, whose ``REST`` is the derived table); a WebSocket frame's is its row in
:data:`WS`. The handlers enforce them (``chatnode/http.py`` in ``prepare``,
``chatnode/websockets.py`` per frame); the OpenAPI document prints them;
``tests/test_security.py`` walks both tables row by row. A REST method or a frame with no rule
is refused (fail closed), so a new endpoint cannot be forgotten.

Who: ``public`` (no token needed), ``visitor`` (a visitor token), an agent role from
:data:`tidedesk.auth.ROLES`, or ``scope:<name>`` (an integration's API token carrying that
scope of :data:`tidedesk.auth.SCOPES`). Ownership (a visitor's own conversation, an agent's
assigned chats) is checked by the service on top of this.
"""

from __future__ import annotations

from tidedesk.auth import ROLES, SCOPES

PUBLIC = frozenset({"public"})
VISITOR = frozenset({"visitor"})
AGENTS = frozenset(ROLES)
SUPERVISORS = frozenset({"supervisor", "admin"})
ADMINS = frozenset({"admin"})


def scope(name: str) -> frozenset[str]:
    """The rule admitting an API token that carries scope ``name``."""
    assert name in SCOPES, name
    return frozenset({f"scope:{name}"})


# Issue 16's administration routes: an admin, or an integration's token with scope admin.
ADMIN_OR_TOKEN = ADMINS | scope("admin")

# (socket, frame type) -> who may send it. A visitor token opens only /ws/visitor and an agent
# access token only /ws/agent (close 4401 otherwise); this table then decides per frame.
WS: dict[tuple[str, str], frozenset[str]] = {
    **{("visitor", kind): VISITOR for kind in ("message", "resume", "typing", "read", "ping",
                                               "rating")},
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


def scopes_of(rule: frozenset[str]) -> frozenset[str]:
    """The API token scopes a rule admits (any one of them is enough)."""
    return frozenset(w.split(":", 1)[1] for w in rule if w.startswith("scope:"))


def describe(rule: frozenset[str]) -> str:
    """For the OpenAPI document and error messages: 'supervisor or admin', 'agent or an API
    token with scope messages:write'."""
    order = ("public", "visitor", *ROLES)
    parts = [w for w in order if w in rule]
    parts += [f"an API token with scope {s}" for s in SCOPES if s in scopes_of(rule)]
    return " or ".join(parts)

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

from collections.abc import Mapping
from dataclasses import dataclass

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


# -- issue 14: who may read a conversation, and what each inbox view holds -------------------
OPEN_STATES = ("queued", "assigned", "offline")
UNOWNED_STATES = ("queued", "offline")
VIEWS = ("mine", "unassigned", "tickets", "open", "closed")


def site_allows(role: str, pools: tuple[str, ...], site_pools: frozenset[str] | None) -> bool:
    """Agents see the sites of their pools (issue 16): a named site's conversations are for
    agents with one of the site's pools (its routing rules' pools and its bot's pool).
    ``site_pools`` None is the default site or one that does not exist: no site limit."""
    if role in SUPERVISORS or site_pools is None:
        return True
    return not site_pools.isdisjoint(pools)


def hidden_sites(role: str, pools: tuple[str, ...],
                 site_pools: Mapping[str, frozenset[str]]) -> tuple[str, ...]:
    """The named sites none of this agent's pools belongs to (their waiting chats and tickets
    are left out of the agent's views and search)."""
    return tuple(sorted(name for name, of_site in site_pools.items()
                        if not site_allows(role, pools, of_site)))


def may_read(role: str, me: str, pools: tuple[str, ...], state: str, pool: str,
             agent_id: str | None, site_pools: frozenset[str] | None = None) -> bool:
    """Supervisors and admins read every conversation; an agent their own (any state) and
    their pools' waiting chats and tickets, of a site one of their pools belongs to
    (:func:`site_allows`). Writing is stricter (chatnode/conversations.py)."""
    if role in SUPERVISORS:
        return True
    if agent_id is not None and agent_id == me:
        return True
    return state in UNOWNED_STATES and pool in pools and site_allows(role, pools, site_pools)


@dataclass(frozen=True)
class ViewScope:
    """The rows of a view: ``state`` in ``states``; ``owner`` when set must be the agent;
    ``pools`` when set holds the pool; ``readable_by`` (agent id, pools) applies
    :func:`may_read` for an agent."""

    states: tuple[str, ...]
    owner: str | None = None
    pools: tuple[str, ...] | None = None
    readable_by: tuple[str, tuple[str, ...]] | None = None
    # Sites whose rows not held by the agent are left out (:func:`hidden_sites`).
    hidden_sites: tuple[str, ...] = ()


def view_scope(view: str, role: str, me: str, pools: tuple[str, ...],
               hidden: tuple[str, ...] = ()) -> ViewScope:
    """What ``view`` shows this agent (its name was checked against :data:`VIEWS`);
    ``hidden`` are the sites the agent does not see (:func:`hidden_sites`)."""
    everyone = role in SUPERVISORS
    hidden = () if everyone else hidden
    if view == "mine":
        return ViewScope(OPEN_STATES, owner=me)
    if view == "unassigned":
        return ViewScope(("queued",), pools=None if everyone else pools, hidden_sites=hidden)
    if view == "tickets":
        return ViewScope(("offline",), pools=None if everyone else pools, hidden_sites=hidden)
    if view == "closed":
        return ViewScope(("closed",), owner=None if everyone else me)
    return ViewScope(OPEN_STATES, readable_by=None if everyone else (me, pools),
                     hidden_sites=hidden)

"""The agent's inbox (issue 14): views with filters and cursor paging, one conversation with
its context, labels, contacts, and search. Who may read what is :mod:`chatnode.access`
(:func:`~chatnode.access.may_read`, :func:`~chatnode.access.view_scope`); the SQL is the
storage's. Every method raises :class:`ServiceError` for what a client can get wrong."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from chatnode.access import VIEWS, hidden_sites, may_read, view_scope
from chatnode.errors import ServiceError
from chatnode.queries import bounded_int
from tidedesk import reports
from tidedesk.auth import Principal
from tidedesk.frames import frame_dict
from tidedesk.search_text import query_terms, snippet
from tidedesk.site_directory import SiteDirectory
from tidedesk.storage import Storage
from tidedesk.storage.records import Conversation, Visitor

LABEL_RE = re.compile(r"^[\w][\w .-]{0,31}$")
MAX_LABELS = 20
PAGE = 25
PAGE_MAX = 100
SEARCH_PAGE = 20
SEARCH_PAGE_MAX = 100
REPORT_DEFAULT_S = 7 * 86400


def encode_cursor(conv: Conversation) -> str:
    raw = json.dumps([conv.updated_at, conv.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[float, str]:
    try:
        at, conv_id = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return float(at), str(conv_id)
    except (ValueError, TypeError):
        raise ServiceError(400, "invalid_query", "'cursor' is not one this server gave: use "
                           "next_cursor of the previous page") from None


def _time_arg(name: str, raw: str | None) -> float | None:
    """A time filter: unix seconds or an ISO 8601 date/time."""
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise ServiceError(400, "invalid_query", f"'{name}' must be unix seconds or an ISO "
                           "8601 date like 2026-12-01") from None


def _visitor_ref(visitor_id: str, visitor: Visitor | None) -> dict[str, Any]:
    return {"id": visitor_id, "name": visitor.name if visitor else "",
            "email": visitor.email if visitor else None}


class Inbox:
    def __init__(self, *, storage: Storage, directory: SiteDirectory | None = None) -> None:
        self.storage = storage
        self.directory = directory  # which pools each site has (agents see their sites)

    async def _site_pools(self, site: str) -> frozenset[str] | None:
        return await self.directory.site_pools(site) if self.directory is not None else None

    async def _hidden(self, principal: Principal, pools: tuple[str, ...]) -> tuple[str, ...]:
        """The sites this agent does not see (none for supervisors and admins)."""
        if principal.is_supervisor or self.directory is None:
            return ()
        return hidden_sites(principal.role, pools, await self.directory.all_site_pools())

    async def _agent(self, principal: Principal) -> tuple[str, tuple[str, ...]]:
        agent = await self.storage.agents.get(principal.id)
        if agent is None or not agent.active:
            raise ServiceError(403, "forbidden", "this agent no longer exists")
        return str(agent.id), agent.pool_list

    async def readable(self, principal: Principal, conv_id: str) -> Conversation:
        """The conversation if this agent may read it: 404 unknown, 403 not theirs."""
        conv = await self.storage.conversations.get(conv_id)
        if conv is None:
            raise ServiceError(404, "not_found", f"no conversation {conv_id!r}")
        me, pools = await self._agent(principal)
        if not may_read(principal.role, me, pools, conv.state, conv.pool, conv.agent_id,
                        await self._site_pools(conv.site)):
            raise ServiceError(403, "forbidden", "this conversation is neither yours nor "
                               "waiting in one of your pools of its site")
        return conv

    async def _objects(self, convs: Sequence[Conversation]) -> list[dict[str, Any]]:
        ids = [c.id for c in convs]
        visitors = await self.storage.visitors.many(list({c.visitor_id for c in convs}))
        labels = await self.storage.labels.of(ids)
        latest = await self.storage.messages.latest(ids)
        out = []
        for conv in convs:
            last = latest.get(conv.id)
            out.append({
                "id": conv.id, "state": conv.state, "pool": conv.pool, "site": conv.site,
                "agent_id": conv.agent_id,
                "visitor": _visitor_ref(conv.visitor_id, visitors.get(conv.visitor_id)),
                "labels": labels.get(conv.id, []),
                "last_message": frame_dict(last[0]) if last else None,
                "unread": last[1] if last else 0,
                "created_at": conv.created_at, "updated_at": conv.updated_at})
        return out

    # -- views -----------------------------------------------------------------------------
    async def conversations(self, principal: Principal,
                            args: Mapping[str, str | None]) -> dict[str, Any]:
        view = args.get("view") or "open"
        if view not in VIEWS:
            raise ServiceError(400, "invalid_query", f"'view' must be one of {', '.join(VIEWS)}")
        limit = bounded_int("limit", args.get("limit"), PAGE, 1, PAGE_MAX) or PAGE
        me, pools = await self._agent(principal)
        hidden = await self._hidden(principal, pools)
        scope = view_scope(view, principal.role, me, pools, hidden)
        label = args.get("label")
        if label is not None and not LABEL_RE.match(label):
            raise ServiceError(400, "invalid_query", "'label' is a label: 1-32 letters, "
                               "digits, space . _ -")
        ids: list[str] | None = None
        q = args.get("q")
        if q:
            ids = await self._matching_conversations(principal, me, pools, q, hidden)
        cursor = args.get("cursor")
        convs = await self.storage.conversations.list_view(
            states=scope.states, owner=scope.owner, pools=scope.pools,
            readable_by=scope.readable_by, hidden_sites=scope.hidden_sites,
            site=args.get("site") or None, pool=args.get("pool") or None,
            agent_id=args.get("agent") or None, label=label,
            since=_time_arg("from", args.get("from")), until=_time_arg("to", args.get("to")),
            ids=ids, after=decode_cursor(cursor) if cursor else None, limit=limit + 1)
        more = len(convs) > limit
        convs = convs[:limit]
        return {"conversations": await self._objects(convs),
                "next_cursor": encode_cursor(convs[-1]) if more else None}

    async def _matching_conversations(self, principal: Principal, me: str,
                                      pools: tuple[str, ...], q: str,
                                      hidden: tuple[str, ...] = ()) -> list[str]:
        terms = query_terms(q)
        if not terms:
            return []
        scope = None if principal.is_supervisor else await (
            self.storage.conversations.readable_ids(me, pools, hidden_sites=hidden))
        hits = await self.storage.search.messages(terms, 500, scope)
        ids = list(dict.fromkeys(h.conversation_id for h in hits))
        people = await self.storage.search.contacts(terms, 100, None)
        if people:
            ids.extend(c.id for c in await self.storage.conversations.of_visitors(people))
        return list(dict.fromkeys(ids))

    async def conversation(self, principal: Principal, conv_id: str) -> dict[str, Any]:
        conv = await self.readable(principal, conv_id)
        (item,) = await self._objects([conv])
        visitor = await self.storage.visitors.get(conv.visitor_id)
        item["context"] = visitor.context if visitor else {}
        item["rating"] = None  # ratings are issue 13's; null until a conversation has one
        return item

    async def set_labels(self, principal: Principal, conv_id: str,
                         body: Mapping[str, Any]) -> dict[str, Any]:
        await self.readable(principal, conv_id)
        labels = body.get("labels")
        if (not isinstance(labels, list) or len(labels) > MAX_LABELS
                or not all(isinstance(x, str) and LABEL_RE.match(x.strip()) for x in labels)):
            raise ServiceError(400, "invalid_field", f"'labels' must be a list of at most "
                               f"{MAX_LABELS} labels of 1-32 letters, digits, space . _ -")
        saved = await self.storage.labels.set(conv_id, [x.strip() for x in labels])
        await self.storage.audit.record(f"agent:{principal.id}", "conversation.labels", conv_id,
                                        {"labels": saved})
        return {"id": conv_id, "labels": saved}

    # -- contacts --------------------------------------------------------------------------
    async def contact(self, principal: Principal, visitor_id: str) -> dict[str, Any]:
        visitor = await self.storage.visitors.get(visitor_id)
        if visitor is None:
            raise ServiceError(404, "not_found", f"no contact {visitor_id!r}")
        me, pools = await self._agent(principal)
        convs = await self.storage.conversations.of_visitors([visitor_id])
        visible = [c for c in convs if may_read(principal.role, me, pools, c.state, c.pool,
                                                c.agent_id, await self._site_pools(c.site))]
        if not visible and not principal.is_supervisor:
            raise ServiceError(403, "forbidden", "none of this contact's conversations is "
                               "yours or waiting in one of your pools")
        latest = await self.storage.messages.latest([c.id for c in visible])
        return {
            "id": visitor.id, "name": visitor.name, "email": visitor.email,
            "phone": visitor.phone, "tags": list(visitor.tag_list), "locale": visitor.locale,
            "fields": visitor.fields, "context": visitor.context,
            "identified": visitor.external_id is not None,
            "conversations": [{"id": c.id, "state": c.state, "created_at": c.created_at,
                               "last_message": (frame_dict(latest[c.id][0])
                                                if c.id in latest else None)}
                              for c in visible]}

    # -- search ----------------------------------------------------------------------------
    async def search(self, principal: Principal, q: str | None,
                     limit_arg: str | None) -> dict[str, Any]:
        limit = bounded_int("limit", limit_arg, SEARCH_PAGE, 1, SEARCH_PAGE_MAX) or SEARCH_PAGE
        terms = query_terms(q or "")
        if not terms:
            raise ServiceError(400, "invalid_query", "'q' must hold a word to search for "
                               "(Chinese: two or more characters)")
        if principal.is_supervisor:
            scope: list[str] | None = None
        else:
            me, pools = await self._agent(principal)
            scope = await self.storage.conversations.readable_ids(
                me, pools, hidden_sites=await self._hidden(principal, pools))
        hits = await self.storage.search.messages(terms, limit, scope)
        visitor_scope = None
        if scope is not None:
            visitor_scope = list({c.visitor_id for c in
                                  await self.storage.conversations.many(scope)})
        people = await self.storage.search.contacts(terms, limit, visitor_scope)
        visitors = await self.storage.visitors.many(people)
        messages = []
        for hit in hits:
            text, marks = snippet(hit.body, terms)
            messages.append({"conversation_id": hit.conversation_id, "seq": hit.seq,
                             "from": hit.from_, "body": hit.body, "ts": hit.ts,
                             "private": hit.private, "snippet": text,
                             "highlights": [list(m) for m in marks],
                             "score": round(hit.score, 4)})
        return {"messages": messages,
                "contacts": [_visitor_ref(v, visitors.get(v)) for v in people
                             if v in visitors]}

    # -- reports ---------------------------------------------------------------------------
    async def report(self, args: Mapping[str, str | None], now: float) -> dict[str, Any]:
        """The summary of conversations created in [from, to) (default: the last 7 days)."""
        until = _time_arg("to", args.get("to")) or now
        since = _time_arg("from", args.get("from"))
        since = until - REPORT_DEFAULT_S if since is None else since
        if since >= until:
            raise ServiceError(400, "invalid_query", "'from' must be before 'to'")
        rows = await self.storage.reports.times(since, until, args.get("pool") or None,
                                                args.get("agent") or None,
                                                args.get("site") or None)
        # The rating of the same conversations (pool, agent, site, dates), issue 13's table.
        out = reports.summary(rows, await self.storage.reports.rating(
            [r.conversation_id for r in rows]))
        out["from"], out["to"] = since, until
        return out

    async def report_chart(self, args: Mapping[str, str | None], now: float,
                           title: str) -> str:
        data = await self.report(args, now)
        hours: list[dict[str, int]] = data["by_hour"]
        return reports.bar_chart_svg([h["conversations"] for h in hours],
                                     [f"{h['hour']:02d}" for h in hours], title)

"""Conversations: who is talking to whom, their state and pool."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import peewee as pw

from tidedesk.storage.database import Database, new_id
from tidedesk.storage.records import Conversation, QueuedConversation


def _record(row: Any) -> Conversation:
    return Conversation(id=row.id, visitor_id=row.visitor_id, state=row.state, pool=row.pool,
                        agent_id=row.agent_id, created_at=row.created_at,
                        updated_at=row.updated_at, site=row.site)


class ConversationRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def current_for_visitor(self, visitor_id: str,
                                  site: str = "default") -> tuple[Conversation, bool]:
        """The visitor's open conversation, or a new one (``created`` True, on the visitor's
        ``site``) if none is open."""

        def work() -> tuple[Conversation, bool]:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                row = (conv.select()
                       .where((conv.visitor_id == visitor_id) & (conv.state != "closed"))
                       .order_by(conv.created_at.desc()).first())
                if row is not None:
                    return _record(row), False
                created = conv.create(id=new_id(), visitor_id=visitor_id, state="queued",
                                      site=site)
                return _record(created), True

        found, created = await self._db.run(work)
        if created:
            await self._db.visitors_changed([visitor_id])
        return found, created

    async def open_for_visitor(self, visitor_id: str) -> Conversation | None:
        """The visitor's open (not closed) conversation, newest first; None when they have
        none (issue 13: opening the widget creates nothing)."""

        def work() -> Conversation | None:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                row = (conv.select()
                       .where((conv.visitor_id == visitor_id) & (conv.state != "closed"))
                       .order_by(conv.created_at.desc()).first())
            return None if row is None else _record(row)

        return await self._db.run(work)

    async def get(self, conv_id: str) -> Conversation | None:
        def work() -> Conversation | None:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                row = conv.get_or_none(conv.id == conv_id)
            return None if row is None else _record(row)

        return await self._db.run(work)

    async def update(self, conv_id: str, **fields: Any) -> None:
        def work() -> list[str]:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                conv.update(updated_at=time.time(), **fields).where(conv.id == conv_id).execute()
                # whose connect data changed (the connect cache forgets it): a primary-key
                # read in the same pool job, no extra thread hop
                return [r.visitor_id for r in conv.select(conv.visitor_id)
                        .where(conv.id == conv_id)]

        await self._db.visitors_changed(await self._db.run(work))

    async def many(self, conv_ids: Sequence[str]) -> list[Conversation]:
        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            if not conv_ids:
                return []
            with main.db.connection_context():
                return [_record(r) for r in conv.select().where(conv.id.in_(list(conv_ids)))]

        return await self._db.run(work)

    async def open_for_agent(self, agent_id: str) -> list[Conversation]:
        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                return [_record(r) for r in
                        conv.select().where((conv.agent_id == agent_id)
                                            & (conv.state == "assigned"))
                        .order_by(conv.created_at)]

        return await self._db.run(work)

    async def queued_with_tags(self) -> list[QueuedConversation]:
        """Waiting conversations, oldest first, with their visitor's tags, in one query."""

        def work() -> list[QueuedConversation]:
            main = self._db.main
            conv = main["Conversation"]
            visitor = main["Visitor"]
            with main.db.connection_context():
                rows = (conv.select(conv, visitor.tags)
                        .join(visitor, pw.JOIN.LEFT_OUTER, on=(conv.visitor_id == visitor.id))
                        .where(conv.state == "queued").order_by(conv.created_at).objects())
                return [QueuedConversation(
                    id=r.id, visitor_id=r.visitor_id, pool=r.pool, created_at=r.created_at,
                    tags=tuple(t for t in (r.tags or "").split(",") if t)) for r in rows]

        return await self._db.run(work)

    async def offline_in_pools(self, pools: Sequence[str], *, limit: int) -> list[Conversation]:
        """Offline conversations (tickets) of these pools, oldest first (issue 13: routed
        again when an agent of the pool comes online)."""

        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            if not pools:
                return []
            with main.db.connection_context():
                return [_record(r) for r in
                        conv.select().where((conv.state == "offline")
                                            & conv.pool.in_(list(pools)))
                        .order_by(conv.created_at).limit(limit)]

        return await self._db.run(work)

    async def quiet(self, *, before: float, after: float = 0.0,
                    limit: int) -> list[Conversation]:
        """Queued or assigned conversations whose row has not changed since ``before`` (and
        changed after ``after``: a sweep's cursor), quietest first (issue 13: candidates for
        the idle close)."""

        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                return [_record(r) for r in
                        conv.select().where(conv.state.in_(["queued", "assigned"])
                                            & (conv.updated_at < before)
                                            & (conv.updated_at > after))
                        .order_by(conv.updated_at).limit(limit)]

        return await self._db.run(work)

    async def for_visitor(self, visitor_id: str) -> list[Conversation]:
        """Every conversation of a visitor, oldest first (export, erasure)."""
        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                return [_record(r) for r in conv.select().where(conv.visitor_id == visitor_id)
                        .order_by(conv.created_at)]

        return await self._db.run(work)

    async def closed_before(self, cutoff: float, limit: int) -> list[str]:
        """Ids of up to ``limit`` closed conversations last changed before ``cutoff``."""
        def work() -> list[str]:
            main = self._db.main
            conv = main["Conversation"]
            with main.db.connection_context():
                return [r.id for r in conv.select(conv.id).where(
                    (conv.state == "closed") & (conv.updated_at < cutoff))
                    .order_by(conv.updated_at).limit(limit)]

        return await self._db.run(work)

    async def delete(self, conv_ids: Sequence[str]) -> int:
        """Delete conversations and their tickets (their messages: MessageRepository.delete)."""
        def work() -> tuple[int, list[str]]:
            main = self._db.main
            conv, ticket = main["Conversation"], main["Ticket"]
            with main.db.connection_context(), main.db.atomic():
                visitors = [r.visitor_id for r in conv.select(conv.visitor_id)
                            .where(conv.id.in_(list(conv_ids)))]
                ticket.delete().where(ticket.conversation_id.in_(list(conv_ids))).execute()
                return int(conv.delete().where(conv.id.in_(list(conv_ids))).execute()), visitors

        deleted, visitors = await self._db.run(work)
        await self._db.visitors_changed(visitors)
        return deleted

    # -- issue 14: the inbox ---------------------------------------------------------------
    async def list_view(self, *, states: Sequence[str], owner: str | None,
                        pools: Sequence[str] | None,
                        readable_by: tuple[str, Sequence[str]] | None,
                        pool: str | None = None, agent_id: str | None = None,
                        label: str | None = None, since: float | None = None,
                        until: float | None = None, ids: Sequence[str] | None = None,
                        after: tuple[float, str] | None = None,
                        limit: int = 50, site: str | None = None,
                        hidden_sites: Sequence[str] = ()) -> list[Conversation]:
        """A page of conversations, most recently updated first (then by id), after the
        ``after`` cursor (updated_at, id). The scope (states, owner, pools, readable_by) is
        :func:`chatnode.access.view_scope`'s (``hidden_sites``: rows of these sites are left
        out unless the reader holds them); the rest are the caller's filters."""

        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            query = conv.select().where(conv.state.in_(list(states)))
            if owner is not None:
                query = query.where(conv.agent_id == owner)
            if pools is not None:
                query = query.where(conv.pool.in_(list(pools) or [""]))
                if hidden_sites:
                    query = query.where(conv.site.not_in(list(hidden_sites)))
            if readable_by is not None:
                me, my_pools = readable_by
                waiting = (conv.state.in_(["queued", "offline"])
                           & conv.pool.in_(list(my_pools) or [""]))
                if hidden_sites:
                    waiting = waiting & conv.site.not_in(list(hidden_sites))
                query = query.where((conv.agent_id == me) | waiting)
            if site is not None:
                query = query.where(conv.site == site)
            if pool is not None:
                query = query.where(conv.pool == pool)
            if agent_id is not None:
                query = query.where(conv.agent_id == agent_id)
            if since is not None:
                query = query.where(conv.created_at >= since)
            if until is not None:
                query = query.where(conv.created_at < until)
            if ids is not None:
                query = query.where(conv.id.in_(list(ids) or [""]))
            if label is not None:
                labels = main["ConversationLabel"]
                query = query.where(conv.id.in_(
                    labels.select(labels.conversation_id).where(labels.label == label)))
            if after is not None:
                at, last_id = after
                query = query.where((conv.updated_at < at)
                                    | ((conv.updated_at == at) & (conv.id < last_id)))
            query = query.order_by(conv.updated_at.desc(), conv.id.desc()).limit(limit)
            with main.db.connection_context():
                return [_record(r) for r in query]

        return await self._db.run(work)

    async def readable_ids(self, agent_id: str, pools: Sequence[str],
                           cap: int = 5000, hidden_sites: Sequence[str] = ()) -> list[str]:
        """Ids of the conversations an agent may read (their own, their pools' waiting chats
        and tickets of the sites they see), newest first, at most ``cap``: what search is
        limited to."""

        def work() -> list[str]:
            main = self._db.main
            conv = main["Conversation"]
            waiting = (conv.state.in_(["queued", "offline"])
                       & conv.pool.in_(list(pools) or [""]))
            if hidden_sites:
                waiting = waiting & conv.site.not_in(list(hidden_sites))
            query = (conv.select(conv.id)
                     .where((conv.agent_id == agent_id) | waiting)
                     .order_by(conv.updated_at.desc()).limit(cap))
            with main.db.connection_context():
                return [r.id for r in query]

        return await self._db.run(work)

    async def of_visitors(self, visitor_ids: Sequence[str],
                          limit: int = 200) -> list[Conversation]:
        """The conversations of these visitors, newest first."""

        def work() -> list[Conversation]:
            main = self._db.main
            conv = main["Conversation"]
            if not visitor_ids:
                return []
            with main.db.connection_context():
                return [_record(r) for r in
                        conv.select().where(conv.visitor_id.in_(list(visitor_ids)))
                        .order_by(conv.created_at.desc()).limit(limit)]

        return await self._db.run(work)

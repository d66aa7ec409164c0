"""Tickets: conversations that found no agent (state ``offline``) and wait for a reply by
other means. Status ``open`` / ``pending`` / ``solved`` and an assignee (issue 13)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tidedesk.storage.database import Database
from tidedesk.storage.records import Ticket, TicketView

TICKET_STATUSES = ("open", "pending", "solved")


class TicketRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(self, conv_id: str, visitor_id: str) -> None:
        """Open the conversation's ticket; a second call for it changes nothing."""

        def work() -> None:
            main = self._db.main
            ticket = main["Ticket"]
            with main.db.connection_context():
                ticket.insert(conversation_id=conv_id, visitor_id=visitor_id,
                              updated_at=time.time()).on_conflict_ignore().execute()

        await self._db.run(work)

    async def get(self, conv_id: str) -> Ticket | None:
        def work() -> Ticket | None:
            main = self._db.main
            ticket = main["Ticket"]
            with main.db.connection_context():
                t = ticket.get_or_none(ticket.conversation_id == conv_id)
            return None if t is None else _record(t)

        return await self._db.run(work)

    async def set_status(self, conv_id: str, status: str, *,
                         assignee_id: str | None = None) -> bool:
        """Change the ticket of a conversation (and its assignee, when given); False when the
        conversation has no ticket."""
        if status not in TICKET_STATUSES:
            raise ValueError(f"ticket status must be one of {', '.join(TICKET_STATUSES)}")

        def work() -> bool:
            main = self._db.main
            ticket = main["Ticket"]
            fields: dict[str, object] = {"status": status, "updated_at": time.time()}
            if assignee_id is not None:
                fields["assignee_id"] = assignee_id
            with main.db.connection_context():
                return bool(ticket.update(**fields)
                            .where(ticket.conversation_id == conv_id).execute())

        return await self._db.run(work)

    async def set_assignee(self, conv_id: str, agent_id: str) -> bool:
        """Who answers the conversation's ticket now (it keeps its status); False when the
        conversation has no ticket."""

        def work() -> bool:
            main = self._db.main
            ticket = main["Ticket"]
            with main.db.connection_context():
                return bool(ticket.update(assignee_id=agent_id, updated_at=time.time())
                            .where(ticket.conversation_id == conv_id).execute())

        return await self._db.run(work)

    async def listing(self, *, statuses: Sequence[str] = ("open", "pending"),
                      pools: Sequence[str] | None = None, limit: int = 50,
                      before_id: int | None = None) -> list[TicketView]:
        """Tickets with their conversation, newest first: those of ``statuses``, in ``pools``
        (None: every pool), a page of ``limit`` below ``before_id``. One query; the inbox
        views (issue 14) can build on it."""

        def work() -> list[TicketView]:
            main = self._db.main
            ticket, conv = main["Ticket"], main["Conversation"]
            query = (ticket.select(ticket, conv.state, conv.pool, conv.updated_at.alias("cu"))
                     .join(conv, on=(ticket.conversation_id == conv.id))
                     .where(ticket.status.in_(list(statuses))))
            if pools is not None:
                query = query.where(conv.pool.in_(list(pools)))
            if before_id is not None:
                query = query.where(ticket.id < before_id)
            with main.db.connection_context():
                rows = query.order_by(ticket.id.desc()).limit(limit).objects()
                return [TicketView(
                    id=r.id, conversation_id=r.conversation_id, status=r.status,
                    assignee_id=r.assignee_id, state=r.state, pool=r.pool,
                    visitor_id=r.visitor_id, created_at=r.created_at,
                    updated_at=max(r.updated_at or 0.0, r.cu or 0.0)) for r in rows]

        return await self._db.run(work)

    async def all(self) -> list[Ticket]:
        """Every ticket, newest first."""

        def work() -> list[Ticket]:
            main = self._db.main
            ticket = main["Ticket"]
            with main.db.connection_context():
                return [_record(t) for t in ticket.select().order_by(ticket.created_at.desc())]

        return await self._db.run(work)


def _record(t: Any) -> Ticket:
    return Ticket(id=t.id, conversation_id=t.conversation_id, visitor_id=t.visitor_id,
                  status=t.status, created_at=t.created_at, assignee_id=t.assignee_id,
                  updated_at=t.updated_at)

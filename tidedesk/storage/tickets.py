"""Tickets: conversations that found no agent and wait for a reply by other means."""

from __future__ import annotations

from tidedesk.storage.database import Database
from tidedesk.storage.records import Ticket


class TicketRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(self, conv_id: str, visitor_id: str) -> None:
        """Open the conversation's ticket; a second call for it changes nothing."""

        def work() -> None:
            main = self._db.main
            ticket = main["Ticket"]
            with main.db.connection_context():
                ticket.insert(conversation_id=conv_id, visitor_id=visitor_id).on_conflict_ignore(
                ).execute()

        await self._db.run(work)

    async def all(self) -> list[Ticket]:
        """Every ticket, newest first."""

        def work() -> list[Ticket]:
            main = self._db.main
            ticket = main["Ticket"]
            with main.db.connection_context():
                return [Ticket(id=t.id, conversation_id=t.conversation_id,
                               visitor_id=t.visitor_id, status=t.status,
                               created_at=t.created_at)
                        for t in ticket.select().order_by(ticket.created_at.desc())]

        return await self._db.run(work)

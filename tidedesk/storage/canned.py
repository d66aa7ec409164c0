"""Canned responses: the shortcuts agents expand into prepared answers."""

from __future__ import annotations

from tidedesk.storage.database import Database
from tidedesk.storage.records import CannedResponse


class CannedRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[CannedResponse]:
        """Every canned response, by shortcut."""

        def work() -> list[CannedResponse]:
            main = self._db.main
            model = main["CannedResponse"]
            with main.db.connection_context():
                return [CannedResponse(id=r.id, shortcut=r.shortcut, body=r.body)
                        for r in model.select().order_by(model.shortcut)]

        return await self._db.run(work)

    def seed_sync(self, items: dict[str, str]) -> None:
        """Add these shortcuts; ones that exist keep their body."""
        main = self._db.main
        model = main["CannedResponse"]
        with main.db.connection_context():
            for shortcut, body in items.items():
                model.insert(shortcut=shortcut, body=body).on_conflict_ignore().execute()

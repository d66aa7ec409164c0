"""Canned responses: the shortcuts agents expand into prepared answers, shared (``owner_id``
None) or personal to one agent. A shortcut is unique across all of them, so ``/hello`` never
means two things in one console."""

from __future__ import annotations

from typing import Any

import peewee as pw

from tidedesk.storage.database import Database
from tidedesk.storage.records import CannedResponse


def _record(row: Any) -> CannedResponse:
    return CannedResponse(id=row.id, shortcut=row.shortcut, body=row.body, owner_id=row.owner_id)


class ShortcutTaken(ValueError):
    """Another canned response has this shortcut."""


class CannedRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[CannedResponse]:
        """Every canned response, by shortcut."""

        def work() -> list[CannedResponse]:
            main = self._db.main
            model = main["CannedResponse"]
            with main.db.connection_context():
                return [_record(r) for r in model.select().order_by(model.shortcut)]

        return await self._db.run(work)

    async def visible_to(self, agent_id: str) -> list[CannedResponse]:
        """The shared ones and this agent's own, by shortcut."""
        return [c for c in await self.all() if c.owner_id in (None, agent_id)]

    async def get(self, canned_id: int) -> CannedResponse | None:
        def work() -> CannedResponse | None:
            main = self._db.main
            model = main["CannedResponse"]
            with main.db.connection_context():
                row = model.get_or_none(model.id == canned_id)
                return _record(row) if row is not None else None

        return await self._db.run(work)

    async def create(self, *, shortcut: str, body: str, owner_id: str | None) -> CannedResponse:
        """Raises :class:`ShortcutTaken`."""

        def work() -> CannedResponse:
            main = self._db.main
            model = main["CannedResponse"]
            with main.db.connection_context():
                try:
                    return _record(model.create(shortcut=shortcut, body=body, owner_id=owner_id))
                except pw.IntegrityError:
                    raise ShortcutTaken(shortcut) from None

        return await self._db.run(work)

    async def update(self, canned_id: int, *, shortcut: str, body: str) -> None:
        """Raises :class:`ShortcutTaken`."""

        def work() -> None:
            main = self._db.main
            model = main["CannedResponse"]
            with main.db.connection_context():
                try:
                    model.update(shortcut=shortcut, body=body).where(
                        model.id == canned_id).execute()
                except pw.IntegrityError:
                    raise ShortcutTaken(shortcut) from None

        await self._db.run(work)

    async def delete(self, canned_id: int) -> None:
        def work() -> None:
            main = self._db.main
            model = main["CannedResponse"]
            with main.db.connection_context():
                model.delete().where(model.id == canned_id).execute()

        await self._db.run(work)

    def seed_sync(self, items: dict[str, str]) -> None:
        """Add these shortcuts; ones that exist keep their body."""
        main = self._db.main
        model = main["CannedResponse"]
        with main.db.connection_context():
            for shortcut, body in items.items():
                model.insert(shortcut=shortcut, body=body).on_conflict_ignore().execute()

"""Ratings (issue 13): a visitor's 1-5 score of a closed conversation, once per conversation."""

from __future__ import annotations

from typing import Any

import peewee as pw

from tidedesk.storage.database import Database
from tidedesk.storage.records import Rating


def _record(row: Any) -> Rating:
    return Rating(conversation_id=row.conversation_id, visitor_id=row.visitor_id,
                  agent_id=row.agent_id, score=row.score, comment=row.comment,
                  created_at=row.created_at)


class RatingRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, *, conv_id: str, visitor_id: str, agent_id: str | None, score: int,
                  comment: str, now: float) -> Rating | None:
        """Store the rating; None when the conversation was rated already."""

        def work() -> Rating | None:
            main = self._db.main
            model = main["Rating"]
            with main.db.connection_context():
                try:
                    with main.db.atomic():
                        row = model.create(conversation_id=conv_id, visitor_id=visitor_id,
                                           agent_id=agent_id, score=score, comment=comment,
                                           created_at=now)
                except pw.IntegrityError:
                    return None
                return _record(row)

        return await self._db.run(work)

    async def get(self, conv_id: str) -> Rating | None:
        def work() -> Rating | None:
            main = self._db.main
            model = main["Rating"]
            with main.db.connection_context():
                row = model.get_or_none(model.conversation_id == conv_id)
            return None if row is None else _record(row)

        return await self._db.run(work)

    async def recent(self, limit: int = 20) -> tuple[float | None, int, list[Rating]]:
        """(average score, count, the newest ``limit``): what the supervisor view shows."""

        def work() -> tuple[float | None, int, list[Rating]]:
            main = self._db.main
            model = main["Rating"]
            with main.db.connection_context():
                avg, count = model.select(pw.fn.AVG(model.score), pw.fn.COUNT(model.id)).scalar(
                    as_tuple=True)
                rows = model.select().order_by(model.created_at.desc()).limit(limit)
                return (None if avg is None else round(float(avg), 2), int(count or 0),
                        [_record(r) for r in rows])

        return await self._db.run(work)

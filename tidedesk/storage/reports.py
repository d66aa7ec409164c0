"""What the report summary reads (issue 14): conversations in a time range and the first
visitor and agent message of each, from every shard; the rating average when a rating table
exists (ratings are issue 13's; without the table the average is null)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidedesk.models import shard_index
from tidedesk.reports import ConversationTimes
from tidedesk.storage.database import Database

# At most this many conversations are read for one summary (the newest); chunks of CHUNK ids.
MAX_CONVERSATIONS = 50_000
CHUNK = 500


class ReportRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def times_sync(self, since: float, until: float, pool: str | None,
                   agent_id: str | None, site: str | None = None) -> list[ConversationTimes]:
        main = self._db.main
        conv = main["Conversation"]
        query = conv.select(conv.id, conv.created_at, conv.updated_at, conv.state).where(
            (conv.created_at >= since) & (conv.created_at < until))
        if pool:
            query = query.where(conv.pool == pool)
        if agent_id:
            query = query.where(conv.agent_id == agent_id)
        if site:
            query = query.where(conv.site == site)
        with main.db.connection_context():
            convs = list(query.order_by(conv.created_at.desc()).limit(MAX_CONVERSATIONS).tuples())
        firsts: dict[str, tuple[float | None, float | None]] = {}
        shards = self._db.shards
        by_shard: dict[int, list[str]] = {}
        for row in convs:
            by_shard.setdefault(shard_index(row[0], len(shards)), []).append(row[0])
        for index, ids in by_shard.items():
            shard = shards[index]
            db: Any = shard.db
            with shard.db.connection_context():
                for start in range(0, len(ids), CHUNK):
                    chunk = ids[start:start + CHUNK]
                    marks = ", ".join([db.param] * len(chunk))
                    sql = ("SELECT conversation_id, "
                           "MIN(CASE WHEN sender_type = 'visitor' THEN ts END), "
                           f"MIN(CASE WHEN sender_type = 'agent' AND private = {db.param} "
                           "THEN ts END) FROM message "
                           f"WHERE conversation_id IN ({marks}) GROUP BY conversation_id")
                    for cid, visitor, agent in db.execute_sql(sql, [False, *chunk]).fetchall():
                        firsts[cid] = (visitor, agent)
        return [ConversationTimes(created_at=r[1], updated_at=r[2], closed=r[3] == "closed",
                                  first_visitor=firsts.get(r[0], (None, None))[0],
                                  first_agent=firsts.get(r[0], (None, None))[1],
                                  conversation_id=r[0])
                for r in convs]

    def rating_sync(self, conv_ids: Sequence[str] | None = None) -> tuple[float | None, int]:
        """(average score, count) of the ratings (issue 13's ``rating`` table), of these
        conversations only when ``conv_ids`` is given (a report's filters)."""
        main = self._db.main
        db: Any = main.db
        if conv_ids is not None and not conv_ids:
            return None, 0
        total, count = 0.0, 0
        with main.db.connection_context():
            if not db.table_exists("rating"):
                return None, 0
            chunks = ([None] if conv_ids is None else
                      [list(conv_ids[i:i + CHUNK]) for i in range(0, len(conv_ids), CHUNK)])
            for chunk in chunks:
                sql, params = "SELECT SUM(score), COUNT(*) FROM rating", []
                if chunk is not None:
                    sql += f" WHERE conversation_id IN ({', '.join([db.param] * len(chunk))})"
                    params = chunk
                row = db.execute_sql(sql, params).fetchone()
                total += float(row[0] or 0)
                count += int(row[1] or 0)
        return (total / count if count else None), count

    async def times(self, since: float, until: float, pool: str | None,
                    agent_id: str | None, site: str | None = None) -> list[ConversationTimes]:
        return await self._db.run(self.times_sync, since, until, pool, agent_id, site)

    async def rating(self, conv_ids: Sequence[str] | None = None) -> tuple[float | None, int]:
        return await self._db.run(self.rating_sync, conv_ids)

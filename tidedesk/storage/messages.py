"""Messages: the history of every conversation, sharded by conversation, written in batches
and idempotent on the client's id; read back as :class:`~tidedesk.frames.MessageFrame`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import peewee as pw

from tidedesk.frames import MessageFrame, attachments_from_json
from tidedesk.models import shard_index
from tidedesk.search_text import index_terms
from tidedesk.storage.database import Database, clamp_page

BODY_CONTEXT = "message.body"
ATTACHMENTS_CONTEXT = "message.attachments"
MESSAGE_COLUMNS = ("conversation_id", "seq", "client_id", "sender_type", "sender_id",
                   "sender_name", "body", "private", "ts", "attachments", "search_text")


def _insert_ignore_sql(db: pw.Database) -> str:
    """INSERT that skips rows whose (conversation, client id) exists: idempotent storing."""
    verb = "INSERT OR IGNORE" if isinstance(db, pw.SqliteDatabase) else "INSERT IGNORE"
    marks = ", ".join([db.param] * len(MESSAGE_COLUMNS))
    return f"{verb} INTO message ({', '.join(MESSAGE_COLUMNS)}) VALUES ({marks})"


class MessageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def insert_sync(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store a batch; rows whose (conversation, client id) exists are dropped, so a batch
        that failed part-way can be written again whole."""
        shards = self._db.shards
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_shard.setdefault(shard_index(row["conversation_id"], len(shards)),
                                []).append(row)
        if self._db.cipher is not None:
            by_shard = {i: [self._seal_row(r) for r in rs] for i, rs in by_shard.items()}
        for index, shard_rows in by_shard.items():
            shard = shards[index]
            sql = _insert_ignore_sql(shard.db)
            # .get: "attachments" (issue 15) is optional in a row; text-only rows leave it out.
            search = self._search_text_of(shard.db)
            params = [(*tuple(row.get(c) for c in MESSAGE_COLUMNS[:-1]), search(row))
                      for row in shard_rows]
            with shard.db.connection_context():
                # One prepared statement for the whole batch (PyMySQL turns it into a single
                # multi-row INSERT): building it through peewee's query objects cost more than
                # the database's own work per row.
                db: Any = shard.db  # peewee's cursor() is untyped
                if isinstance(shard.db, pw.SqliteDatabase):
                    with db.atomic():  # SQLite inserts row by row: one commit for them all
                        db.cursor().executemany(sql, params)
                else:
                    # No BEGIN/COMMIT around it (two round trips, issue 17): one statement
                    # commits by itself. Should PyMySQL split a batch of long rows over
                    # ~1 MB into several statements, and a later one fail, the batch is
                    # retried whole and the rows already in are skipped (INSERT IGNORE).
                    db.cursor().executemany(sql, params)

    def _search_text_of(self, db: pw.Database) -> Any:
        """What search indexes of a row (issue 14, ``tidedesk.search_text``): the body for
        SQLite's trigram table, words and CJK pairs for MariaDB's FULLTEXT index; nothing when
        bodies are stored encrypted (the index would give the text away)."""
        if self._db.encrypt_bodies:
            return lambda row: ""
        if isinstance(db, pw.SqliteDatabase):
            return lambda row: row.get("plain_body", row["body"])
        return lambda row: index_terms(row.get("plain_body", row["body"]))

    def delete_conversations_sync(self, conv_ids: Sequence[str]) -> int:
        """Erase the whole history of these conversations from their shards, index included
        (the seam erasure calls). Returns how many messages went."""
        shards = self._db.shards
        by_shard: dict[int, list[str]] = {}
        for conv_id in conv_ids:
            by_shard.setdefault(shard_index(conv_id, len(shards)), []).append(conv_id)
        removed = 0
        for index, ids in by_shard.items():
            shard = shards[index]
            msg = shard["Message"]
            with shard.db.connection_context():
                removed += msg.delete().where(msg.conversation_id.in_(ids)).execute()
        return removed

    async def delete_conversations(self, conv_ids: Sequence[str]) -> int:
        return await self._db.run(self.delete_conversations_sync, list(conv_ids))

    def delete_visitor_sync(self, visitor_id: str) -> int:
        """Erase every message of every conversation of this visitor (index included)."""
        main = self._db.main
        conv = main["Conversation"]
        with main.db.connection_context():
            ids = [r.id for r in conv.select(conv.id).where(conv.visitor_id == visitor_id)]
        return self.delete_conversations_sync(ids) if ids else 0

    async def delete_visitor(self, visitor_id: str) -> int:
        return await self._db.run(self.delete_visitor_sync, visitor_id)

    def edit_body_sync(self, conv_id: str, seq: int, body: str) -> bool:
        """Change a stored message's body, and what search finds with it."""
        shard = self._db.shard_for(conv_id)
        msg = shard["Message"]
        stored = (self._db.cipher.encrypt(body, BODY_CONTEXT)
                  if self._db.encrypt_bodies and self._db.cipher is not None else body)
        search = self._search_text_of(shard.db)({"body": body})
        with shard.db.connection_context():
            changed = (msg.update(body=stored, search_text=search)
                       .where((msg.conversation_id == conv_id) & (msg.seq == seq)).execute())
        return bool(changed)

    async def edit_body(self, conv_id: str, seq: int, body: str) -> bool:
        return await self._db.run(self.edit_body_sync, conv_id, seq, body)

    def _seal_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A visitor's name is kept only encrypted on the visitor, never beside a message;
        bodies are encrypted when ``encrypt_bodies`` is on."""
        cipher = self._db.cipher
        assert cipher is not None
        changes: dict[str, Any] = {}
        if row["sender_type"] == "visitor":
            changes["sender_name"] = ""
        if self._db.encrypt_bodies:
            changes["body"] = cipher.encrypt(row["body"], BODY_CONTEXT)
            if row.get("attachments"):
                changes["attachments"] = cipher.encrypt(row["attachments"], ATTACHMENTS_CONTEXT)
            changes["plain_body"] = row["body"]
        return {**row, **changes} if changes else row

    async def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        await self._db.run(self.insert_sync, rows)

    async def page(self, conv_id: str, *, after_seq: int | None = None,
                   before_seq: int | None = None, limit: int = 100,
                   include_private: bool = False) -> list[MessageFrame]:
        """Messages in seq order: after ``after_seq`` (oldest first), or the newest ``limit``
        before ``before_seq``."""
        limit = clamp_page(limit)

        def work() -> list[MessageFrame]:
            shard = self._db.shard_for(conv_id)
            msg = shard["Message"]
            query = msg.select().where(msg.conversation_id == conv_id)
            if not include_private:
                query = query.where(msg.private == False)  # noqa: E712 - peewee expression
            with shard.db.connection_context():
                if before_seq is not None:
                    rows = list(query.where(msg.seq < before_seq)
                                .order_by(msg.seq.desc()).limit(limit))
                    rows.reverse()
                else:
                    rows = list(query.where(msg.seq > (after_seq or 0))
                                .order_by(msg.seq).limit(limit))
            return [MessageFrame(conversation_id=r.conversation_id, seq=r.seq, id=r.client_id,
                                 from_=r.sender_type, body=self._open_body(r.body),
                                 ts=r.ts, name=r.sender_name, private=bool(r.private),
                                 attachments=self._open_attachments(r.attachments))
                    for r in rows]

        return await self._db.run(work)

    def _open_body(self, stored: str) -> str:
        """The plaintext of a body written encrypted (even if encryption was turned off since);
        a body that merely looks like a sealed value is shown as it is."""
        cipher = self._db.cipher
        if cipher is None or not stored.startswith("v"):
            return stored
        plain = cipher.decrypt(stored, BODY_CONTEXT)
        return stored if plain is None else plain

    def _open_attachments(self, stored: str | None) -> tuple[Any, ...]:
        if not stored:
            return ()
        cipher = self._db.cipher
        if cipher is not None and stored.startswith("v"):
            stored = cipher.decrypt(stored, ATTACHMENTS_CONTEXT) or ""
        return attachments_from_json(stored)

    async def max_seq(self, conv_id: str) -> int:
        def work() -> int:
            shard = self._db.shard_for(conv_id)
            msg = shard["Message"]
            with shard.db.connection_context():
                value = (msg.select(pw.fn.MAX(msg.seq))
                         .where(msg.conversation_id == conv_id).scalar())
            return int(value or 0)

        return await self._db.run(work)

    async def seq_of(self, conv_id: str, client_id: str) -> int | None:
        """The seq a client id was stored under (the unique key), or None: the backstop of the
        store's bounded idempotency memory."""
        def work() -> int | None:
            shard = self._db.shard_for(conv_id)
            msg = shard["Message"]
            with shard.db.connection_context():
                value = (msg.select(msg.seq).where((msg.conversation_id == conv_id)
                                                   & (msg.client_id == client_id)).scalar())
            return None if value is None else int(value)

        return await self._db.run(work)

    async def count(self, conv_id: str) -> int:
        def work() -> int:
            shard = self._db.shard_for(conv_id)
            msg = shard["Message"]
            with shard.db.connection_context():
                return int(msg.select().where(msg.conversation_id == conv_id).count())

        return await self._db.run(work)

    async def erase(self, conv_ids: Sequence[str]) -> int:
        """Overwrite every body and sender name of these conversations, in whichever shard holds
        each (the rows stay: seq, sender type and times are the skeleton reports count). SQLite
        files are checkpointed so the old text leaves the write-ahead log too."""
        def work() -> int:
            erased = 0
            shards = self._db.shards
            by_shard: dict[int, list[str]] = {}
            for conv_id in conv_ids:
                by_shard.setdefault(shard_index(conv_id, len(shards)), []).append(conv_id)
            for index, ids in by_shard.items():
                shard = shards[index]
                msg = shard["Message"]
                with shard.db.connection_context():
                    # search_text too: the search index (issue 14) follows it, by trigger on
                    # SQLite and by its FULLTEXT index on MariaDB; the files' names go too.
                    erased += int(msg.update(body="", sender_name="", search_text="",
                                             attachments=None)
                                  .where(msg.conversation_id.in_(ids)).execute())
                    if isinstance(shard.db, pw.SqliteDatabase):
                        sqlite: Any = shard.db  # peewee's execute_sql is untyped
                        sqlite.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return erased

        return await self._db.run(work)

    async def delete(self, conv_ids: Sequence[str]) -> int:
        """Delete every message of these conversations, in whichever shard holds each."""
        def work() -> int:
            deleted = 0
            shards = self._db.shards
            by_shard: dict[int, list[str]] = {}
            for conv_id in conv_ids:
                by_shard.setdefault(shard_index(conv_id, len(shards)), []).append(conv_id)
            for index, ids in by_shard.items():
                msg = shards[index]["Message"]
                with shards[index].db.connection_context():
                    deleted += int(msg.delete().where(msg.conversation_id.in_(ids)).execute())
            return deleted


        return await self._db.run(work)

    async def latest(self, conv_ids: Sequence[str]) -> dict[str, tuple[MessageFrame, int]]:
        """Per conversation: its newest public message, and how many visitor messages came
        after the last agent reply (notes do not count): unread by the agents. Conversations
        with no message are left out. One query per shard."""

        def work() -> dict[str, tuple[MessageFrame, int]]:
            shards = self._db.shards
            by_shard: dict[int, list[str]] = {}
            for conv_id in conv_ids:
                by_shard.setdefault(shard_index(conv_id, len(shards)), []).append(conv_id)
            out: dict[str, tuple[MessageFrame, int]] = {}
            for index, ids in by_shard.items():
                shard = shards[index]
                db: Any = shard.db
                marks = ", ".join([db.param] * len(ids))
                last_sql = (
                    "SELECT m.conversation_id, m.seq, m.client_id, m.sender_type, m.body, m.ts, "
                    "m.sender_name FROM message m JOIN (SELECT conversation_id, MAX(seq) AS seq "
                    f"FROM message WHERE conversation_id IN ({marks}) AND private = {db.param} "
                    "GROUP BY conversation_id) last ON m.conversation_id = last.conversation_id "
                    "AND m.seq = last.seq")
                unread_sql = (
                    "SELECT m.conversation_id, COUNT(*) FROM message m "
                    f"WHERE m.conversation_id IN ({marks}) AND m.sender_type = 'visitor' "
                    "AND m.seq > COALESCE((SELECT MAX(a.seq) FROM message a WHERE "
                    "a.conversation_id = m.conversation_id AND a.sender_type = 'agent' "
                    f"AND a.private = {db.param}), 0) "
                    "GROUP BY m.conversation_id")
                with shard.db.connection_context():
                    unread = dict(db.execute_sql(unread_sql, [*ids, False]).fetchall())
                    for row in db.execute_sql(last_sql, [*ids, False]).fetchall():
                        frame = MessageFrame(conversation_id=row[0], seq=row[1], id=row[2],
                                             from_=row[3], body=self._open_body(row[4]),
                                             ts=row[5], name=row[6])
                        out[row[0]] = (frame, int(unread.get(row[0], 0)))
            return out

        if not conv_ids:
            return {}
        return await self._db.run(work)

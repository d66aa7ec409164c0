"""Full-text search over messages (every shard, then merged) and contacts (the main database).

What is indexed and how a query matches is :mod:`tidedesk.search_text`; the index itself is
made by :func:`tidedesk.models.migrate` and kept in step with every write there (SQLite
triggers; MariaDB's FULLTEXT index follows its column). This module only reads it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import peewee as pw

from tidedesk.crypto import FieldCipher
from tidedesk.models import Shard
from tidedesk.search_text import (
    boolean_query,
    contact_query_tokens,
    contact_tokens,
    index_terms,
    like_pattern,
    matches,
)
from tidedesk.storage.database import Database

# The trigram tokenizer indexes substrings of three characters: shorter terms use LIKE.
TRIGRAM = 3
BODY_CONTEXT = "message.body"  # as tidedesk.storage.messages seals bodies
# A scope of at most this many conversations is read directly, not through FULLTEXT.
SCOPE_SCAN = 2000
_FALLBACK_BLIND_KEY = b"tidedesk-blind-index-without-a-storage-key"


class MessageHit(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    seq: int
    from_: str = msgspec.field(name="from")
    body: str
    ts: float
    private: bool
    score: float


class SearchRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- contacts --------------------------------------------------------------------------
    def blind(self, token: str) -> str:
        cipher = self._db.cipher
        if cipher is not None:
            return cipher.blind(token)
        return hmac.new(_FALLBACK_BLIND_KEY, token.encode(), hashlib.sha256).hexdigest()[:20]

    def contact_search_tokens(self, name: str | None, email: str | None) -> str:
        """The visitor's ``search_tokens`` column: blinded tokens, space-delimited."""
        tokens = contact_tokens(name, email)
        return " " + " ".join(self.blind(t) for t in tokens) + " " if tokens else ""

    def contacts_sync(self, terms: list[str], limit: int,
                      visitor_ids: Collection[str] | None) -> list[str]:
        """Ids of visitors whose name or e-mail has every term (newest first)."""
        needs = contact_query_tokens(terms)
        if not needs or (visitor_ids is not None and not visitor_ids):
            return []
        main = self._db.main
        model = main["Visitor"]
        query = model.select(model.id)
        for need in needs:
            for token in need:
                query = query.where(model.search_tokens.contains(f" {self.blind(token)} "))
        if visitor_ids is not None:
            query = query.where(model.id.in_(list(visitor_ids)))
        with main.db.connection_context():
            return [r.id for r in query.order_by(model.created_at.desc()).limit(limit)]

    # -- messages --------------------------------------------------------------------------
    def messages_sync(self, terms: list[str], limit: int,
                      conv_ids: Collection[str] | None) -> list[MessageHit]:
        """The best ``limit`` messages with every term, over every shard: ranked by the store's
        relevance, then newest first. ``conv_ids`` limits them to those conversations."""
        if not terms or (conv_ids is not None and not conv_ids):
            return []
        def one(shard: Shard) -> list[MessageHit]:
            with shard.db.connection_context():
                if isinstance(shard.db, pw.SqliteDatabase):
                    return self._sqlite(shard.db, terms, limit, conv_ids)
                return self._mariadb(shard.db, terms, limit, conv_ids)

        shards = self._db.shards
        hits: list[MessageHit] = []
        if len(shards) == 1 or isinstance(shards[0].db, pw.SqliteDatabase):
            for shard in shards:
                hits.extend(one(shard))
        else:  # every MariaDB shard at once: the answer takes the slowest, not the sum
            with ThreadPoolExecutor(max_workers=len(shards),
                                    thread_name_prefix="tidedesk-search") as pool:
                for found in pool.map(one, shards):
                    hits.extend(found)
        hits.sort(key=lambda h: (-h.score, -h.ts))
        return hits[:limit]

    def _sqlite(self, db: Any, terms: list[str], limit: int,
                conv_ids: Collection[str] | None) -> list[MessageHit]:
        long = [t for t in terms if len(t) >= TRIGRAM]
        short = [t for t in terms if len(t) < TRIGRAM]
        where: list[str] = []
        params: list[Any] = []
        if long:
            where.append("message_fts MATCH ?")
            params.append(" AND ".join('"' + t.replace('"', '""') + '"' for t in long))
        for term in short:
            where.append("f.search_text LIKE ? ESCAPE '\\'")
            params.append(like_pattern(term))
        if conv_ids is not None:
            where.append(f"m.conversation_id IN ({', '.join('?' * len(conv_ids))})")
            params.extend(conv_ids)
        score = "-bm25(message_fts)" if long else "0.0"
        sql = (f"SELECT m.conversation_id, m.seq, m.sender_type, m.body, m.ts, m.private, "
               f"{score} AS score FROM message_fts f JOIN message m ON m.id = f.rowid "
               f"WHERE {' AND '.join(where)} ORDER BY score DESC, m.ts DESC LIMIT ?")
        rows = db.execute_sql(sql, [*params, limit]).fetchall()
        return [self._hit(r) for r in rows]

    def _mariadb(self, db: Any, terms: list[str], limit: int,
                 conv_ids: Collection[str] | None) -> list[MessageHit]:
        against = boolean_query(terms)
        # More candidates than asked: the index finds the words and pairs, the check below
        # drops those whose pairs are not neighbours in the order asked (or that lack a term).
        candidates = limit * 4 + 20
        columns = "conversation_id, seq, sender_type, body, ts, private"
        small_scope = conv_ids is not None and len(conv_ids) <= SCOPE_SCAN
        if not against or small_scope:
            # Only one-character or two-letter terms (nothing indexed can help), or an agent's
            # few conversations: reading those through the conversation index costs their size,
            # where FULLTEXT would rank every match of the word in the shard. Newest first.
            likes = " AND ".join(["search_text <> '' AND body LIKE %s"] * len(terms))
            sql = (f"SELECT {columns}, 0.0 FROM message WHERE {likes}"
                   f"{self._scope_sql(conv_ids)} ORDER BY ts DESC LIMIT %s")
            rows = db.execute_sql(sql, [*(like_pattern(t) for t in terms), *(conv_ids or ()),
                                        candidates]).fetchall()
            return [self._hit(r) for r in rows if matches(r[3], terms)][:limit]
        if conv_ids is None:
            # Natural-language mode with MATCH in WHERE and no ORDER BY: InnoDB hands back the
            # most relevant rows first and stops at the LIMIT (a priority queue), where boolean
            # mode + ORDER BY ranks every match (a word in 1 % of a million messages: 10-50x
            # slower). Its OR of the words is checked below; if too few rows have them all,
            # the exact boolean query answers.
            natural = " ".join(part.lstrip("+") for part in against.split())
            sql = (f"SELECT {columns}, MATCH(search_text) AGAINST (%s) AS score FROM message "
                   "WHERE MATCH(search_text) AGAINST (%s) LIMIT %s")
            wide = candidates if " " not in natural else limit * 10 + 50
            rows = db.execute_sql(sql, [natural, natural, wide]).fetchall()
            hits = [self._hit(r) for r in rows if matches(r[3], terms)]
            if len(hits) >= limit or len(rows) < wide:
                return hits[:limit]
        sql = (f"SELECT {columns}, MATCH(search_text) AGAINST (%s IN BOOLEAN MODE) AS score "
               "FROM message WHERE MATCH(search_text) AGAINST (%s IN BOOLEAN MODE)"
               f"{self._scope_sql(conv_ids)} ORDER BY score DESC LIMIT %s")
        rows = db.execute_sql(sql, [against, against, *(conv_ids or ()), candidates]).fetchall()
        return [self._hit(r) for r in rows if matches(r[3], terms)][:limit]

    @staticmethod
    def _scope_sql(conv_ids: Collection[str] | None) -> str:
        if conv_ids is None:
            return ""
        return f" AND conversation_id IN ({', '.join(['%s'] * len(conv_ids))})"

    def _hit(self, row: Sequence[Any]) -> MessageHit:
        body = self._plain_body(row[3])  # a body sealed before search existed is opened
        return MessageHit(conversation_id=row[0], seq=int(row[1]), from_=row[2],
                          body=body if body is not None else "",
                          ts=float(row[4]), private=bool(row[5]), score=float(row[6] or 0.0))

    def reindex_messages_sync(self, batch: int = 1000) -> dict[str, int]:
        """Index what was stored before search existed: messages whose ``search_text`` is NULL
        get it (empty for bodies stored encrypted). Safe to run again or to interrupt."""
        counts = {"messages": 0}
        encrypted = self._db.encrypt_bodies
        for shard in self._db.shards:
            msg = shard["Message"]
            sqlite = isinstance(shard.db, pw.SqliteDatabase)
            with shard.db.connection_context():
                while True:
                    rows = list(msg.select(msg.id, msg.body).where(msg.search_text.is_null())
                                .order_by(msg.id).limit(batch))
                    if not rows:
                        break
                    with shard.db.atomic():
                        for row in rows:
                            plain = self._plain_body(row.body)
                            text = ("" if encrypted or plain is None
                                    else plain if sqlite else index_terms(plain))
                            msg.update(search_text=text).where(msg.id == row.id).execute()
                    counts["messages"] += len(rows)
        return counts

    def _plain_body(self, stored: str) -> str | None:
        """The body in the clear, or None when it is sealed (with any key)."""
        cipher = self._db.cipher
        if cipher is not None and cipher.looks_sealed(stored):
            return cipher.decrypt(stored, BODY_CONTEXT)
        return None if FieldCipher.looks_sealed(stored) else stored

    async def messages(self, terms: list[str], limit: int,
                       conv_ids: Collection[str] | None) -> list[MessageHit]:
        return await self._db.run(self.messages_sync, terms, limit, conv_ids)

    async def contacts(self, terms: list[str], limit: int,
                       visitor_ids: Collection[str] | None) -> list[str]:
        return await self._db.run(self.contacts_sync, terms, limit, visitor_ids)

"""The mail outbox (issue 13): mail waiting to go out, claimed by one sender at a time.

Claims are a conditional ``UPDATE`` (the row is still pending, due, and its lease is over), so
any number of senders, on SQLite or MariaDB, never send one row twice at once; a sender that
dies mid-send loses its lease and another takes the row over after ``lease_s``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import peewee as pw

from tidedesk.storage.database import Database, new_id

ADDRESS_CONTEXT = "mail_outbox.to"  # associated data of an encrypted transcript address


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    conversation_id: str
    visitor_id: str
    to: str | None  # a transcript's address (decrypted); a reply goes to the visitor's
    status: str
    due_at: float
    attempts: int
    last_reply_seq: int
    upto_seq: int
    message_id: str
    last_error: str
    created_at: float
    sent_at: float | None


def _pending_key(conv_id: str) -> str:
    return f"reply:{conv_id}:pending"


# MariaDB may pick a writer of the pending row as a deadlock victim (two routers noting
# replies of one conversation while a sender finishes it); the statement is simply run again.
DEADLOCK_RETRIES = 5
_DEADLOCK_CODES = (1213, 1205)  # deadlock, lock wait timeout


def _retrying(fn: Any) -> Any:
    for attempt in range(DEADLOCK_RETRIES):
        try:
            return fn()
        except pw.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            if code not in _DEADLOCK_CODES or attempt == DEADLOCK_RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    return None


class MailRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _model(self) -> Any:
        return self._db.main["MailOutbox"]

    def _item(self, row: Any) -> OutboxItem:
        cipher = self._db.cipher
        to = None
        if row.to_enc:
            to = cipher.decrypt(row.to_enc, ADDRESS_CONTEXT) if cipher else row.to_enc
        return OutboxItem(id=row.id, kind=row.kind, conversation_id=row.conversation_id,
                          visitor_id=row.visitor_id, to=to, status=row.status,
                          due_at=row.due_at, attempts=row.attempts,
                          last_reply_seq=row.last_reply_seq, upto_seq=row.upto_seq,
                          message_id=row.message_id, last_error=row.last_error,
                          created_at=row.created_at, sent_at=row.sent_at)

    async def note_reply(self, conv_id: str, visitor_id: str, seq: int, due_at: float) -> None:
        """An agent reply at ``seq`` wants mailing: the conversation's pending reply mail
        (made now, due at ``due_at``, or the one already waiting) must carry it."""

        def work() -> None:
            model, main = self._model(), self._db.main
            # One statement (an upsert on the pending key): a sender finishing the pending row
            # either sees this seq or has renamed the row already, so this makes a fresh one.
            insert = model.insert(kind="reply", conversation_id=conv_id, visitor_id=visitor_id,
                                  dedupe=_pending_key(conv_id), due_at=due_at,
                                  last_reply_seq=seq, created_at=time.time())
            if isinstance(main.db, pw.SqliteDatabase):
                query = insert.on_conflict(conflict_target=[model.dedupe], update={
                    model.last_reply_seq: pw.fn.MAX(model.last_reply_seq,
                                                    pw.EXCLUDED.last_reply_seq)})
            else:
                query = insert.on_conflict(update={model.last_reply_seq: pw.fn.GREATEST(
                    model.last_reply_seq, pw.SQL("VALUES(last_reply_seq)"))})
            with main.db.connection_context():
                _retrying(query.execute)

        await self._db.run(work)

    async def queue_transcript(self, conv_id: str, visitor_id: str, to: str,
                               now: float) -> int:
        cipher = self._db.cipher
        sealed = cipher.encrypt(to, ADDRESS_CONTEXT) if cipher else to

        def work() -> int:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                return int(model.insert(kind="transcript", conversation_id=conv_id,
                                        visitor_id=visitor_id, to_enc=sealed,
                                        dedupe=f"transcript:{new_id()}", due_at=now,
                                        created_at=now).execute())

        return await self._db.run(work)

    async def transcripts_for(self, conv_id: str) -> int:
        """How many transcripts of the conversation were asked for (a bound per chat)."""

        def work() -> int:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                return int(model.select().where((model.conversation_id == conv_id)
                                                & (model.kind == "transcript")).count())

        return await self._db.run(work)

    async def claim_due(self, now: float, *, lease_s: float, worker: str,
                        limit: int = 20) -> list[OutboxItem]:
        """Pending rows that are due, each claimed for ``lease_s`` by ``worker``; a row
        another sender claimed first is left out."""

        def work() -> list[OutboxItem]:
            model, main = self._model(), self._db.main
            claimed = []
            with main.db.connection_context():
                ids = [r.id for r in model.select(model.id).where(
                    (model.status == "pending") & (model.due_at <= now)
                    & (model.lease_until < now)).order_by(model.due_at).limit(limit)]
                for row_id in ids:
                    won = model.update(lease_until=now + lease_s, lease_by=worker[:64]).where(
                        (model.id == row_id) & (model.status == "pending")
                        & (model.lease_until < now)).execute()
                    if won == 1:
                        claimed.append(self._item(model.get_by_id(row_id)))
            return claimed

        return await self._db.run(work)

    async def last_mailed_seq(self, conv_id: str) -> int:
        """The newest agent reply a finished reply mail of the conversation carried."""

        def work() -> int:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                row = (model.select(model.upto_seq).where(
                    (model.conversation_id == conv_id) & (model.kind == "reply")
                    & (model.status.in_(["sent", "skipped"])))
                    .order_by(model.upto_seq.desc()).first())
            return int(row.upto_seq) if row else 0

        return await self._db.run(work)

    async def sent_message_ids(self, conv_id: str, limit: int = 10) -> list[str]:
        """Message-IDs of the mails sent for the conversation, oldest first (References)."""

        def work() -> list[str]:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                rows = list(model.select(model.message_id).where(
                    (model.conversation_id == conv_id) & (model.status == "sent")
                    & (model.message_id != "")).order_by(model.sent_at.desc()).limit(limit))
            return [r.message_id for r in reversed(rows)]

        return await self._db.run(work)

    async def finish(self, item: OutboxItem, status: str, *, upto_seq: int = 0,
                     message_id: str = "", error: str = "", now: float) -> None:
        """The row is done (``sent``, ``skipped`` or ``dead``). A reply row gives up its
        pending key, and when a reply came in after its mail was built, a new pending row
        carries it at once."""

        def transaction() -> None:
            model, main = self._model(), self._db.main
            with main.db.atomic():
                row = model.get_by_id(item.id)
                model.update(status=status, upto_seq=upto_seq, message_id=message_id,
                             last_error=error[:2000], sent_at=now, lease_until=0,
                             dedupe=f"{row.kind}:{row.conversation_id}:{row.id}").where(
                    model.id == item.id).execute()
                if row.kind == "reply" and status != "dead" and row.last_reply_seq > upto_seq:
                    model.insert(kind="reply", conversation_id=row.conversation_id,
                                 visitor_id=row.visitor_id,
                                 dedupe=_pending_key(row.conversation_id), due_at=now,
                                 last_reply_seq=row.last_reply_seq,
                                 created_at=now).on_conflict_ignore().execute()

        def work() -> None:
            with self._db.main.db.connection_context():
                _retrying(transaction)

        await self._db.run(work)

    async def retry(self, item: OutboxItem, *, due_at: float, error: str) -> None:
        def work() -> None:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                model.update(attempts=model.attempts + 1, due_at=due_at, lease_until=0,
                             last_error=error[:2000]).where(model.id == item.id).execute()

        await self._db.run(work)

    async def items(self, conv_id: str | None = None) -> list[OutboxItem]:
        """Every row (of one conversation), oldest first: for operators and tests."""

        def work() -> list[OutboxItem]:
            model, main = self._model(), self._db.main
            query = model.select().order_by(model.id)
            if conv_id is not None:
                query = query.where(model.conversation_id == conv_id)
            with main.db.connection_context():
                return [self._item(r) for r in query]

        return await self._db.run(work)

"""History and directory storage: the peewee database(s) behind an async API.

Blocking peewee calls run in a thread pool (one thread for SQLite, which serialises writes
anyway; ``db_pool_size`` threads for MySQL/MariaDB) so the Tornado loop never waits on disk.
Messages are sharded by conversation (:func:`tidedesk.models.shard_index`); everything else
lives in the first database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import peewee as pw
import pybreaker

from tidedesk.crypto import FieldCipher
from tidedesk.errors import StorageUnavailable
from tidedesk.models import Shard, bind_models, migrate, open_database, shard_index

log = logging.getLogger(__name__)
T = TypeVar("T")

# Largest page a client may ask for in one history request.
MAX_PAGE = 500
# Circuit breaker: after this many database failures in a row, stop calling the database for
# this long and fail at once (routers then hold their messages in the broker).
BREAKER_FAIL_MAX = 5
BREAKER_RESET_SECS = 5.0
_DB_DOWN = (pw.OperationalError, pw.InterfaceError)


def _not_a_db_outage(exc: BaseException) -> bool:
    """Only connection-level errors open the breaker; a unique-key clash is not an outage."""
    return not isinstance(exc, _DB_DOWN)


MESSAGE_COLUMNS = ("conversation_id", "seq", "client_id", "sender_type", "sender_id",
                   "sender_name", "body", "private", "ts")


def _insert_ignore_sql(db: pw.Database) -> str:
    """INSERT that skips rows whose (conversation, client id) exists: idempotent storing."""
    verb = "INSERT OR IGNORE" if isinstance(db, pw.SqliteDatabase) else "INSERT IGNORE"
    marks = ", ".join([db.param] * len(MESSAGE_COLUMNS))
    return f"{verb} INTO message ({', '.join(MESSAGE_COLUMNS)}) VALUES ({marks})"


def new_id() -> str:
    return uuid.uuid4().hex


# Associated data of each encrypted field (a value moved to another column does not decrypt).
VISITOR_FIELDS = {"name": "visitor.name", "email": "visitor.email", "phone": "visitor.phone"}
BODY_CONTEXT = "message.body"
TOTP_CONTEXT = "agent.totp_secret"


def message_frame(row: Any, body: str | None = None) -> dict[str, Any]:
    """A stored message as the wire's ``message`` frame (``body``: the decrypted text)."""
    frame: dict[str, Any] = {
        "type": "message",
        "conversation_id": row.conversation_id,
        "seq": row.seq,
        "id": row.client_id,
        "from": row.sender_type,
        "body": row.body if body is None else body,
        "ts": row.ts,
    }
    if row.sender_name:
        frame["name"] = row.sender_name
    if row.private:
        frame["private"] = True
    return frame


def visitor_summary(visitor_id: str, row: Any) -> dict[str, Any]:
    """What agents are told about a visitor (``assigned`` frames, agent ``hello``)."""
    return {"id": visitor_id, "name": row.name if row else "",
            "tags": list(row.tag_list) if row else [], "locale": row.locale if row else "en"}


class Storage:
    """``cipher``: visitors' name, e-mail and phone are stored encrypted with it (and message
    bodies too with ``encrypt_bodies``); rows read back carry the plaintext in ``name``,
    ``email`` and ``phone``. Without one, names are stored in the clear (tools, benchmarks)."""

    def __init__(self, urls: Sequence[str], pool_size: int = 4, *,
                 cipher: FieldCipher | None = None, encrypt_bodies: bool = False) -> None:
        if not urls:
            raise ValueError("at least one database URL is needed")
        if encrypt_bodies and cipher is None:
            raise ValueError("encrypt_bodies needs a cipher")
        self.cipher = cipher
        self.encrypt_bodies = encrypt_bodies
        self.shards: list[Shard] = [
            bind_models(open_database(url, pool_size), main=(i == 0)) for i, url in enumerate(urls)
        ]
        self.main = self.shards[0]
        sqlite = isinstance(self.main.db, pw.SqliteDatabase)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if sqlite else pool_size, thread_name_prefix="tidedesk-db"
        )
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=BREAKER_FAIL_MAX, reset_timeout=BREAKER_RESET_SECS,
            exclude=[_not_a_db_outage], name="database")

    # -- plumbing ---------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking database function in the pool, behind the circuit breaker.

        Raises :class:`StorageUnavailable` when the database is down or the breaker is open."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.breaker.call, fn, *args)
        except pybreaker.CircuitBreakerError:
            raise StorageUnavailable("the database is unavailable (circuit open); retry "
                                     "shortly") from None
        except _DB_DOWN as exc:
            raise StorageUnavailable(f"the database is unavailable: {exc}") from exc

    @property
    def available(self) -> bool:
        return self.breaker.current_state != pybreaker.STATE_OPEN

    def shard_for(self, conv_id: str) -> Shard:
        return self.shards[shard_index(conv_id, len(self.shards))]

    def migrate_all(self) -> int:
        version = 0
        for shard in self.shards:
            version = migrate(shard)
        return version

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for shard in self.shards:
            if not shard.db.is_closed():
                shard.db.close()

    # -- agents -----------------------------------------------------------------------------
    def _totp_fields(self, secret: str | None) -> dict[str, Any]:
        """The columns that store a TOTP seed: encrypted when we hold a key."""
        if self.cipher is None:
            return {"totp_secret": secret, "totp_secret_enc": None}
        return {"totp_secret": None, "totp_secret_enc":
                self.cipher.encrypt(secret, TOTP_CONTEXT) if secret else None}

    def _open_agent(self, row: Any) -> Any:
        """Put the plaintext TOTP seed in ``totp_secret`` (not saved). A seed we cannot decrypt
        (no key here) still reads as set, so 'has 2FA' stays true and sign-in fails closed."""
        if row is not None and row.totp_secret_enc:
            plain = self.cipher.decrypt(row.totp_secret_enc, TOTP_CONTEXT) if self.cipher else None
            row.totp_secret = plain or "!undecryptable"
        return row

    def create_agent_sync(self, *, email: str, name: str, password_hash: str, role: str,
                          pools: Iterable[str], max_chats: int, totp_secret: str | None) -> Any:
        agent = self.main["Agent"]
        with self.main.db.connection_context():
            return self._open_agent(agent.create(
                email=email.lower(), name=name, password_hash=password_hash, role=role,
                pools=",".join(pools), max_chats=max_chats, **self._totp_fields(totp_secret)))

    def agent_by_email_sync(self, email: str) -> Any:
        agent = self.main["Agent"]
        with self.main.db.connection_context():
            return self._open_agent(agent.get_or_none(agent.email == email.strip().lower()))

    def agent_sync(self, agent_id: int | str) -> Any:
        agent = self.main["Agent"]
        try:
            key = int(agent_id)
        except (TypeError, ValueError):
            return None
        with self.main.db.connection_context():
            return self._open_agent(agent.get_or_none(agent.id == key))

    def list_agents_sync(self) -> list[Any]:
        agent = self.main["Agent"]
        with self.main.db.connection_context():
            return [self._open_agent(a) for a in agent.select().order_by(agent.id)]

    async def agent_by_email(self, email: str) -> Any:
        return await self.run(self.agent_by_email_sync, email)

    async def agent(self, agent_id: int | str) -> Any:
        return await self.run(self.agent_sync, agent_id)

    async def list_agents(self) -> list[Any]:
        return await self.run(self.list_agents_sync)

    # -- visitors and conversations ----------------------------------------------------------
    def _seal(self, value: str | None, field: str) -> str | None:
        if not value or self.cipher is None:
            return None
        return self.cipher.encrypt(value, VISITOR_FIELDS[field])

    def _open_visitor(self, row: Any) -> Any:
        """Put the plaintext of the encrypted fields on the row (not saved)."""
        if row is None:
            return None
        for field, context in VISITOR_FIELDS.items():
            stored = getattr(row, f"{field}_enc")
            plain = (self.cipher.decrypt(stored, context) if stored and self.cipher else None)
            if plain is None and field == "name":
                plain = row.name  # schema 1, or stored without a cipher
            setattr(row, field, plain or ("" if field == "name" else None))
        return row

    async def create_visitor(self, *, name: str, email: str | None, tags: Sequence[str],
                             locale: str, phone: str | None = None) -> str:
        plain_name = "" if self.cipher is not None else name
        fields = {"name_enc": self._seal(name, "name"), "email_enc": self._seal(email, "email"),
                  "phone_enc": self._seal(phone, "phone")}

        def work() -> str:
            visitor_id = new_id()
            with self.main.db.connection_context():
                self.main["Visitor"].create(id=visitor_id, name=plain_name, tags=",".join(tags),
                                            locale=locale, **fields)
            return visitor_id

        return await self.run(work)

    async def visitor(self, visitor_id: str) -> Any:
        def work() -> Any:
            model = self.main["Visitor"]
            with self.main.db.connection_context():
                return self._open_visitor(model.get_or_none(model.id == visitor_id))

        return await self.run(work)

    async def visitors(self, visitor_ids: Sequence[str]) -> dict[str, Any]:
        """Visitors by id, in one query."""

        def work() -> dict[str, Any]:
            model = self.main["Visitor"]
            if not visitor_ids:
                return {}
            with self.main.db.connection_context():
                return {v.id: self._open_visitor(v)
                        for v in model.select().where(model.id.in_(list(visitor_ids)))}

        return await self.run(work)

    async def current_conversation(self, visitor_id: str) -> tuple[Any, bool]:
        """The visitor's open conversation, or a new one (``created`` True) if none is open."""

        def work() -> tuple[Any, bool]:
            conv = self.main["Conversation"]
            with self.main.db.connection_context():
                row = (conv.select()
                       .where((conv.visitor_id == visitor_id) & (conv.state != "closed"))
                       .order_by(conv.created_at.desc()).first())
                if row is not None:
                    return row, False
                return conv.create(id=new_id(), visitor_id=visitor_id, state="queued"), True

        return await self.run(work)

    async def conversation(self, conv_id: str) -> Any:
        def work() -> Any:
            conv = self.main["Conversation"]
            with self.main.db.connection_context():
                return conv.get_or_none(conv.id == conv_id)

        return await self.run(work)

    async def update_conversation(self, conv_id: str, **fields: Any) -> None:
        def work() -> None:
            conv = self.main["Conversation"]
            with self.main.db.connection_context():
                conv.update(updated_at=time.time(), **fields).where(conv.id == conv_id).execute()

        await self.run(work)

    async def conversations(self, conv_ids: Sequence[str]) -> list[Any]:
        def work() -> list[Any]:
            conv = self.main["Conversation"]
            if not conv_ids:
                return []
            with self.main.db.connection_context():
                return list(conv.select().where(conv.id.in_(list(conv_ids))))

        return await self.run(work)

    async def open_conversations_for_agent(self, agent_id: str) -> list[Any]:
        def work() -> list[Any]:
            conv = self.main["Conversation"]
            with self.main.db.connection_context():
                return list(conv.select().where((conv.agent_id == agent_id)
                                                & (conv.state == "assigned"))
                            .order_by(conv.created_at))

        return await self.run(work)

    async def open_ticket(self, conv_id: str, visitor_id: str) -> None:
        def work() -> None:
            ticket = self.main["Ticket"]
            with self.main.db.connection_context():
                ticket.insert(conversation_id=conv_id, visitor_id=visitor_id).on_conflict_ignore(
                ).execute()

        await self.run(work)

    async def tickets(self) -> list[Any]:
        def work() -> list[Any]:
            ticket = self.main["Ticket"]
            with self.main.db.connection_context():
                return list(ticket.select().order_by(ticket.created_at.desc()))

        return await self.run(work)

    # -- messages ---------------------------------------------------------------------------
    def insert_messages_sync(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store a batch atomically; rows whose (conversation, client id) exists are dropped."""
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_shard.setdefault(shard_index(row["conversation_id"], len(self.shards)),
                                []).append(row)
        if self.cipher is not None:
            by_shard = {i: [self._seal_row(r) for r in rs] for i, rs in by_shard.items()}
        for index, shard_rows in by_shard.items():
            shard = self.shards[index]
            sql = _insert_ignore_sql(shard.db)
            params = [tuple(row[c] for c in MESSAGE_COLUMNS) for row in shard_rows]
            with shard.db.connection_context(), shard.db.atomic():
                # One prepared statement for the whole batch (PyMySQL turns it into a single
                # multi-row INSERT): building it through peewee's query objects cost more than
                # the database's own work per row.
                db: Any = shard.db  # peewee's cursor() is untyped
                db.cursor().executemany(sql, params)

    def _seal_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A visitor's name is kept only encrypted on the visitor, never beside a message;
        bodies are encrypted when ``encrypt_bodies`` is on."""
        assert self.cipher is not None
        changes: dict[str, Any] = {}
        if row["sender_type"] == "visitor":
            changes["sender_name"] = ""
        if self.encrypt_bodies:
            changes["body"] = self.cipher.encrypt(row["body"], BODY_CONTEXT)
        return {**row, **changes} if changes else row

    async def insert_messages(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.run(self.insert_messages_sync, rows)

    async def messages(self, conv_id: str, *, after_seq: int | None = None,
                       before_seq: int | None = None, limit: int = 100,
                       include_private: bool = False) -> list[dict[str, Any]]:
        """Messages in seq order: after ``after_seq`` (oldest first), or the newest ``limit``
        before ``before_seq``."""
        limit = max(1, min(limit, MAX_PAGE))

        def work() -> list[dict[str, Any]]:
            shard = self.shard_for(conv_id)
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
            return [message_frame(r, self._open_body(r.body)) for r in rows]

        return await self.run(work)

    def _open_body(self, stored: str) -> str:
        """The plaintext of a body written encrypted (even if encryption was turned off since);
        a body that merely looks like a sealed value is shown as it is."""
        if self.cipher is None or not stored.startswith("v"):
            return stored
        plain = self.cipher.decrypt(stored, BODY_CONTEXT)
        return stored if plain is None else plain

    async def max_seq(self, conv_id: str) -> int:
        def work() -> int:
            shard = self.shard_for(conv_id)
            msg = shard["Message"]
            with shard.db.connection_context():
                value = (msg.select(pw.fn.MAX(msg.seq))
                         .where(msg.conversation_id == conv_id).scalar())
            return int(value or 0)

        return await self.run(work)

    async def count_messages(self, conv_id: str) -> int:
        def work() -> int:
            shard = self.shard_for(conv_id)
            msg = shard["Message"]
            with shard.db.connection_context():
                return int(msg.select().where(msg.conversation_id == conv_id).count())

        return await self.run(work)

    # -- canned responses and audit ----------------------------------------------------------
    async def canned(self) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            model = self.main["CannedResponse"]
            with self.main.db.connection_context():
                return [{"id": r.id, "shortcut": r.shortcut, "body": r.body}
                        for r in model.select().order_by(model.shortcut)]

        return await self.run(work)

    def seed_canned_sync(self, items: dict[str, str]) -> None:
        model = self.main["CannedResponse"]
        with self.main.db.connection_context():
            for shortcut, body in items.items():
                model.insert(shortcut=shortcut, body=body).on_conflict_ignore().execute()

    def audit_sync(self, actor: str, action: str, target: str = "",
                   detail: dict[str, Any] | None = None) -> None:
        with self.main.db.connection_context():
            self.main["AuditLog"].create(actor=actor, action=action, target=target,
                                         detail=json.dumps(detail or {}, sort_keys=True))

    async def audit(self, actor: str, action: str, target: str = "",
                    detail: dict[str, Any] | None = None) -> None:
        await self.run(self.audit_sync, actor, action, target, detail)

    async def audit_log(self, *, limit: int = 100, before_id: int | None = None,
                        action: str | None = None) -> list[dict[str, Any]]:
        """Audit entries newest first; ``before_id`` pages back, ``action`` filters by prefix
        (``auth.`` = every sign-in event)."""
        limit = max(1, min(limit, MAX_PAGE))

        def work() -> list[dict[str, Any]]:
            model = self.main["AuditLog"]
            query = model.select().order_by(model.id.desc()).limit(limit)
            if before_id is not None:
                query = query.where(model.id < before_id)
            if action:
                query = query.where(model.action.startswith(action))
            with self.main.db.connection_context():
                return [{"id": r.id, "ts": r.ts, "actor": r.actor, "action": r.action,
                         "target": r.target, "detail": json.loads(r.detail or "{}")}
                        for r in query]

        return await self.run(work)

    # -- ended sign-ins ---------------------------------------------------------------------------
    async def revoke_sign_in(self, family: str, agent_id: str, reason: str) -> None:
        def work() -> None:
            model = self.main["RevokedSignIn"]
            with self.main.db.connection_context():
                model.insert(family=family, agent_id=agent_id, reason=reason,
                             revoked_at=time.time()).on_conflict_ignore().execute()

        await self.run(work)

    async def sign_in_revoked(self, family: str) -> bool:
        def work() -> bool:
            model = self.main["RevokedSignIn"]
            with self.main.db.connection_context():
                return model.get_or_none(model.family == family) is not None

        return await self.run(work)

    # -- agents: changes made through the API ------------------------------------------------
    async def update_agent(self, agent_id: int | str, **fields: Any) -> bool:
        """Change an agent's ``role``, ``totp_secret`` ...; False if there is no such agent."""
        if "totp_secret" in fields:
            fields.update(self._totp_fields(fields.pop("totp_secret")))

        def work() -> bool:
            agent = self.main["Agent"]
            try:
                key = int(agent_id)
            except (TypeError, ValueError):
                return False
            with self.main.db.connection_context():
                return bool(agent.update(**fields).where(agent.id == key).execute())

        return await self.run(work)

    # -- key rotation ---------------------------------------------------------------------------
    def rotate_key_sync(self, batch: int = 500) -> dict[str, int]:
        """Re-encrypt with the cipher's current key every value made with another key, encrypt
        names and TOTP seeds still in the clear, and (with ``encrypt_bodies``) bodies still in
        the clear.
        Returns how many values changed, by kind. Safe to run again or to interrupt."""
        if self.cipher is None:
            raise ValueError("rotate-key needs a cipher")
        cipher = self.cipher
        counts = {"visitor_fields": 0, "agent_secrets": 0, "message_bodies": 0}

        def reseal(stored: str | None, context: str) -> str | None:
            if not stored or not cipher.needs_rotation(stored):
                return None
            plain = cipher.decrypt(stored, context)
            if plain is None:
                raise ValueError(f"a {context} value was made with a key that is neither "
                                 "TIDEDESK_AES_KEY nor in TIDEDESK_AES_PREVIOUS_KEYS")
            return cipher.encrypt(plain, context)

        visitor = self.main["Visitor"]
        with self.main.db.connection_context():
            last = ""
            while True:
                rows = list(visitor.select().where(visitor.id > last)
                            .order_by(visitor.id).limit(batch))
                if not rows:
                    break
                last = rows[-1].id
                with self.main.db.atomic():
                    for row in rows:
                        changes: dict[str, Any] = {}
                        for field, context in VISITOR_FIELDS.items():
                            new = reseal(getattr(row, f"{field}_enc"), context)
                            if new is not None:
                                changes[f"{field}_enc"] = new
                        if row.name and not row.name_enc:
                            changes.update(name="", name_enc=cipher.encrypt(row.name,
                                                                            VISITOR_FIELDS["name"]))
                        if changes:
                            counts["visitor_fields"] += len(changes) - ("name" in changes)
                            visitor.update(**changes).where(visitor.id == row.id).execute()
        agent = self.main["Agent"]
        with self.main.db.connection_context(), self.main.db.atomic():
            for row in agent.select():
                stored = row.totp_secret_enc
                new = reseal(stored, TOTP_CONTEXT)
                if new is None and row.totp_secret and not stored:
                    new = cipher.encrypt(row.totp_secret, TOTP_CONTEXT)
                if new is not None:
                    counts["agent_secrets"] += 1
                    agent.update(totp_secret=None, totp_secret_enc=new).where(
                        agent.id == row.id).execute()
        for shard in self.shards:
            msg = shard["Message"]
            with shard.db.connection_context():
                last_id = 0
                while True:
                    rows = list(msg.select(msg.id, msg.body).where(msg.id > last_id)
                                .order_by(msg.id).limit(batch))
                    if not rows:
                        break
                    last_id = rows[-1].id
                    with shard.db.atomic():
                        for row in rows:
                            plain = cipher.decrypt(row.body, BODY_CONTEXT)
                            if plain is not None:
                                new = (cipher.encrypt(plain, BODY_CONTEXT)
                                       if cipher.needs_rotation(row.body) else None)
                            elif cipher.looks_sealed(row.body):
                                # Encrypting it again would lose it behind two keys.
                                raise ValueError("a message body was made with a key that is "
                                                 "neither TIDEDESK_AES_KEY nor in "
                                                 "TIDEDESK_AES_PREVIOUS_KEYS")
                            elif self.encrypt_bodies:
                                new = cipher.encrypt(row.body, BODY_CONTEXT)
                            else:
                                new = None
                            if new is not None:
                                counts["message_bodies"] += 1
                                msg.update(body=new).where(msg.id == row.id).execute()
        return counts

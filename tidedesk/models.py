"""Storage models (peewee) and the database set-up shared by chat nodes and routers.

No foreign keys: messages are sharded by conversation over several databases, while agents,
visitors, conversations, tickets, canned responses and the audit log live in the first one
(the "main" shard). Each shard gets its own model classes (:func:`bind_models`), so shards can
be used from several threads at once without peewee's global binding.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import peewee as pw
from playhouse.pool import PooledMySQLDatabase
from pymysql.constants import SERVER_STATUS

SCHEMA_VERSION = 2


def now_ts() -> float:
    return time.time()


class _Base(pw.Model):
    pass


def site_field(*, index: bool = True) -> pw.CharField:
    """The shop a visitor or conversation belongs to (issue 16). The default is in the table
    too, so a process of the previous version (a rolling upgrade) can still insert rows."""
    return pw.CharField(max_length=64, default="default", index=index,
                        constraints=[pw.SQL("DEFAULT 'default'")])


class Agent(_Base):
    email = pw.CharField(max_length=254, unique=True)
    name = pw.CharField(max_length=120)
    password_hash = pw.CharField(max_length=255)
    # The TOTP seed: encrypted in totp_secret_enc (tidedesk.crypto) when the storage has a key;
    # totp_secret holds it only from schema 1 or a storage without a key.
    totp_secret = pw.CharField(max_length=64, null=True)
    totp_secret_enc = pw.TextField(null=True)
    role = pw.CharField(max_length=16, default="agent")  # agent | supervisor | admin
    pools = pw.CharField(max_length=255, default="general")  # comma-separated
    max_chats = pw.IntegerField(default=3)
    active = pw.BooleanField(default=True)
    created_at = pw.DoubleField(default=now_ts)
    # issue 16: a one-time invitation (SHA-256 of its token) and when it expires.
    invite_hash = pw.CharField(max_length=64, null=True)
    invite_expires = pw.DoubleField(null=True)

    @property
    def pool_list(self) -> tuple[str, ...]:
        return tuple(p for p in (x.strip() for x in self.pools.split(",")) if p)


class Visitor(_Base):
    id = pw.CharField(max_length=32, primary_key=True)
    # Plaintext only from schema 1 or a Storage without a cipher; otherwise "" and name_enc
    # holds it. The *_enc columns are AES-256-GCM with the key id beside (tidedesk.crypto).
    name = pw.CharField(max_length=120, default="")
    name_enc = pw.TextField(null=True)
    email_enc = pw.TextField(null=True)
    phone_enc = pw.TextField(null=True)
    tags = pw.CharField(max_length=255, default="")
    locale = pw.CharField(max_length=8, default="en")
    created_at = pw.DoubleField(default=now_ts)
    site = site_field()  # issue 16
    # issue 14: blinded search tokens of name and e-mail (space-separated HMAC digests), the
    # context the widget sent (JSON: page_url, referrer, user_agent, tz, browser, os), the
    # pre-chat fields (JSON, encrypted when the storage has a key), and the shop's customer id
    # from a signed identify call (the same contact on every device).
    search_tokens = pw.TextField(null=True)
    context = pw.TextField(null=True)
    fields_enc = pw.TextField(null=True)
    external_id = pw.CharField(max_length=128, null=True, index=True)

    @property
    def tag_list(self) -> tuple[str, ...]:
        return tuple(t for t in self.tags.split(",") if t)


class Conversation(_Base):
    id = pw.CharField(max_length=32, primary_key=True)
    visitor_id = pw.CharField(max_length=32, index=True)
    state = pw.CharField(max_length=16, default="queued")  # queued|assigned|closed|offline
    pool = pw.CharField(max_length=64, default="general")
    agent_id = pw.CharField(max_length=32, null=True, index=True)
    created_at = pw.DoubleField(default=now_ts)
    updated_at = pw.DoubleField(default=now_ts)
    site = site_field()  # issue 16


class Message(_Base):
    conversation_id = pw.CharField(max_length=32)
    seq = pw.IntegerField()
    client_id = pw.CharField(max_length=64)
    sender_type = pw.CharField(max_length=8)  # visitor | agent | system
    sender_id = pw.CharField(max_length=32, default="")
    sender_name = pw.CharField(max_length=120, default="")
    body = pw.TextField()
    private = pw.BooleanField(default=False)
    ts = pw.DoubleField()
    # issue 15: the message's attachments, JSON [{"id", "name", "content_type", "size"}]
    # (sealed like the body when bodies are encrypted); null for text only.
    attachments = pw.TextField(null=True)
    # issue 14: what full-text search indexes (tidedesk.search_text): the body on SQLite (FTS5
    # trigram table message_fts follows it by triggers), words and CJK pairs on MariaDB (a
    # FULLTEXT index); empty when bodies are stored encrypted.
    search_text = pw.TextField(null=True)

    class Meta:
        indexes = (
            (("conversation_id", "client_id"), True),  # idempotency: stored once per client id
            (("conversation_id", "seq"), False),
        )


class Ticket(_Base):
    conversation_id = pw.CharField(max_length=32, unique=True)
    visitor_id = pw.CharField(max_length=32)
    status = pw.CharField(max_length=16, default="open")  # open | pending | solved
    created_at = pw.DoubleField(default=now_ts)
    # issue 13: who answers it (the agent who replied or took it last) and when it changed
    assignee_id = pw.CharField(max_length=32, null=True)
    updated_at = pw.DoubleField(null=True)


class CannedResponse(_Base):
    shortcut = pw.CharField(max_length=64, unique=True)
    body = pw.TextField()
    owner_id = pw.CharField(max_length=32, null=True)  # issue 16: None = shared


class AuditLog(_Base):
    ts = pw.DoubleField(default=now_ts)
    actor = pw.CharField(max_length=120)
    action = pw.CharField(max_length=64)
    target = pw.CharField(max_length=255, default="")
    detail = pw.TextField(default="")


class RevokedSignIn(_Base):
    """Ended sign-ins (token families): the store holds them for speed, this for when the
    store lost them (a Redis or embedded-process restart)."""

    family = pw.CharField(max_length=32, primary_key=True)
    agent_id = pw.CharField(max_length=32)
    reason = pw.CharField(max_length=32)
    revoked_at = pw.DoubleField(default=now_ts)


class MailLinkCode(_Base):
    """A reply mail's one-time chat link (tidedesk/mail/links.py): only the code's SHA-256."""

    code_hash = pw.CharField(max_length=64, primary_key=True)
    visitor_id = pw.CharField(max_length=32, index=True)
    conversation_id = pw.CharField(max_length=32)
    expires_at = pw.DoubleField(index=True)
    used_at = pw.DoubleField(null=True)


class MailOutbox(_Base):
    """issue 13: mail waiting to go out (tidedesk/mail/outbox.py). A ``reply`` row collects
    the agent replies a visitor missed: its ``dedupe`` is ``reply:<conversation>:pending``
    until it is sent, so every reply in between shares it. ``lease_until`` is the claim of the
    sender that is working on it (any number of senders may run)."""

    kind = pw.CharField(max_length=16)  # reply | transcript
    conversation_id = pw.CharField(max_length=32, index=True)
    visitor_id = pw.CharField(max_length=32)
    to_enc = pw.TextField(null=True)  # a transcript's address, encrypted like visitor fields
    dedupe = pw.CharField(max_length=96, unique=True)
    status = pw.CharField(max_length=12, default="pending")  # pending|sent|skipped|dead
    due_at = pw.DoubleField()
    attempts = pw.IntegerField(default=0)
    lease_until = pw.DoubleField(default=0)
    lease_by = pw.CharField(max_length=64, default="")
    last_reply_seq = pw.IntegerField(default=0)  # the newest agent reply it must carry
    upto_seq = pw.IntegerField(default=0)  # what the sent mail carried
    message_id = pw.CharField(max_length=255, default="")
    last_error = pw.TextField(default="")
    created_at = pw.DoubleField(default=now_ts)
    sent_at = pw.DoubleField(null=True)

    class Meta:
        indexes = ((("status", "due_at"), False),)


class Rating(_Base):
    """issue 13: the visitor's 1-5 rating of a closed conversation (one per conversation)."""

    conversation_id = pw.CharField(max_length=32, unique=True)
    visitor_id = pw.CharField(max_length=32)
    agent_id = pw.CharField(max_length=32, null=True, index=True)
    score = pw.SmallIntegerField()
    comment = pw.TextField(default="")
    created_at = pw.DoubleField(default=now_ts)


class Attachment(_Base):
    """An uploaded file (issue 15): bound to a message (conversation + client id) at most once.

    ``uploader`` is ``visitor:<id>`` or ``agent:<id>``; ``visitor_id`` is the uploading visitor,
    or the visitor of the conversation once bound (erasure finds files by either). The bytes
    live in the blob store (``tidedesk.blobs``) under ``id`` (and ``<id>.thumb``)."""

    id = pw.CharField(max_length=32, primary_key=True)
    uploader = pw.CharField(max_length=48, index=True)
    visitor_id = pw.CharField(max_length=32, default="", index=True)
    conversation_id = pw.CharField(max_length=32, null=True, index=True)
    message_id = pw.CharField(max_length=64, null=True)
    name = pw.TextField()  # sealed like visitor fields when the storage has a cipher
    content_type = pw.CharField(max_length=100)
    size = pw.BigIntegerField()
    etag = pw.CharField(max_length=64)
    thumbnail = pw.BooleanField(default=False)
    created_at = pw.DoubleField(default=now_ts)


class BlobPart(_Base):
    """One part of a blob kept in the database (``tidedesk.blobs.database``), on the shard of
    its key; ``pending`` is the writer's token until the blob is committed ('')."""

    key = pw.CharField(max_length=140)
    part = pw.IntegerField()
    data = pw.BlobField()
    pending = pw.CharField(max_length=16, default="")

    class Meta:
        primary_key = pw.CompositeKey("key", "part", "pending")
class ApiToken(_Base):
    """An integration's token (issue 16): only the SHA-256 of the token is kept."""

    id = pw.CharField(max_length=32, primary_key=True)
    name = pw.CharField(max_length=64)
    scopes = pw.CharField(max_length=255)  # comma-separated, of tidedesk.auth.SCOPES
    token_hash = pw.CharField(max_length=64, unique=True)
    created_by = pw.CharField(max_length=120, default="")
    created_at = pw.DoubleField(default=now_ts)
    revoked_at = pw.DoubleField(null=True)


class Webhook(_Base):
    """A receiver of signed event POSTs (issue 16, tidedesk/events.py)."""

    id = pw.CharField(max_length=32, primary_key=True)
    url = pw.CharField(max_length=2048)
    events = pw.CharField(max_length=512)  # comma-separated, of tidedesk.events.EVENTS
    secret = pw.CharField(max_length=128)
    created_by = pw.CharField(max_length=120, default="")
    created_at = pw.DoubleField(default=now_ts)
    # Set when a delivery gave up after the retry horizon; cleared by the next success.
    failing_since = pw.DoubleField(null=True)
    deleted = pw.BooleanField(default=False)


class WebhookDelivery(_Base):
    """One event for one hook: the durable outbox row and the delivery log at once."""

    id = pw.CharField(max_length=32, primary_key=True)
    hook_id = pw.CharField(max_length=32, index=True)
    event_id = pw.CharField(max_length=32)
    event = pw.CharField(max_length=64)
    ts = pw.DoubleField()  # the event's time (receivers may order by it)
    body = pw.TextField()  # the exact bytes POSTed (signed as they are)
    status = pw.CharField(max_length=16, default="pending")  # pending | delivered | failed
    attempts = pw.IntegerField(default=0)
    next_at = pw.DoubleField(index=True)
    last_code = pw.IntegerField(null=True)
    last_latency_ms = pw.IntegerField(null=True)
    last_error = pw.CharField(max_length=255, default="")
    created_at = pw.DoubleField(default=now_ts)
    updated_at = pw.DoubleField(default=now_ts)

    class Meta:
        indexes = ((("hook_id", "event_id"), True),)  # one delivery per event and hook


class Site(_Base):
    """A shop on this installation (issue 16): widget settings, hours and routing, one JSON
    object checked by tidedesk/sites.py."""

    name = pw.CharField(max_length=64, primary_key=True)
    settings = pw.TextField(default="{}")
    deleted = pw.BooleanField(default=False)
    updated_at = pw.DoubleField(default=now_ts)


class ConversationLabel(_Base):
    """issue 14: the labels agents put on a conversation."""

    conversation_id = pw.CharField(max_length=32)
    label = pw.CharField(max_length=32, index=True)

    class Meta:
        indexes = ((("conversation_id", "label"), True),)


class SchemaVersion(_Base):
    version = pw.IntegerField()


MAIN_MODELS: tuple[type[_Base], ...] = (
    Agent, Visitor, Conversation, Ticket, CannedResponse, AuditLog, RevokedSignIn, SchemaVersion,
    Message, MailOutbox, MailLinkCode, Rating, Attachment, BlobPart, ApiToken, Webhook,
    WebhookDelivery, Site, ConversationLabel,
)
SHARD_MODELS: tuple[type[_Base], ...] = (Message, SchemaVersion, BlobPart)


@dataclass
class Shard:
    """One database and model classes bound to it."""

    db: pw.Database
    models: dict[str, type[pw.Model]]

    def __getitem__(self, name: str) -> Any:
        return self.models[name]


def create_private(path: Path) -> None:
    """Make ``path`` an empty file readable by its owner only (0600), in a folder of theirs
    (0700), created with those modes (no chmod afterwards: no moment where others could open
    it). An existing file keeps its mode. SQLite gives its -wal and -shm files the mode of the
    database file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


# A pooled connection handed back less than this long ago is handed out again without a ping.
POOL_PING_IDLE_SECS = 1.0


class QuietPooledMySQL(PooledMySQLDatabase):  # type: ignore[misc]  # peewee is untyped
    """peewee's MySQL pool without its two round trips per use (issue 17).

    peewee pings every connection it takes from the pool and rolls back every connection it
    puts back (PyMySQL does not say whether a transaction is open, so peewee assumes one is):
    a one-statement read cost three round trips to MariaDB, the router's group commit five.
    Here a connection is put back with a ROLLBACK only when the server says a transaction is
    open (``SERVER_STATUS_IN_TRANS`` of its last reply), and taken out with a ping only when
    it sat in the pool for more than :data:`POOL_PING_IDLE_SECS` (the server may have closed
    it meanwhile: ``wait_timeout``, a restart). One that PyMySQL found broken (its socket is
    gone after a network error) is dropped without a ping. The window left: the server goes
    away within that second; each such connection then fails one query (the caller's retry
    or the broker's redelivery covers it, as for any outage) and is dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pooled_at: dict[int, float] = {}  # connections in the pool → when put back

    def _is_closed(self, conn: Any) -> bool:
        pooled_at = self._pooled_at.pop(self.conn_key(conn), None)
        if not conn.open:
            return True
        if pooled_at is not None and time.monotonic() - pooled_at <= POOL_PING_IDLE_SECS:
            return False
        return bool(super()._is_closed(conn))

    def _can_reuse(self, conn: Any) -> bool:
        if not conn.open:
            return False
        if conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
            try:
                conn.rollback()
            except Exception:
                return False
        self._pooled_at[self.conn_key(conn)] = time.monotonic()
        return True


def open_database(url: str, pool_size: int = 4) -> pw.Database:
    """``sqlite:///path`` or ``mysql://user:pass@host:port/db``."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        path = unquote(parsed.path[1:])
        if path in ("", ":memory:", "/:memory:"):
            path = ":memory:"
        else:
            create_private(Path(path))
        return pw.SqliteDatabase(
            path, check_same_thread=False,
            # secure_delete: an erased contact's words are overwritten in the file, not left in
            # free pages (issue 18).
            pragmas={"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000,
                     "secure_delete": "on"},
        )
    if parsed.scheme in ("mysql", "mysql+pool"):
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        mysql: pw.Database = QuietPooledMySQL(
            parsed.path.lstrip("/") or "tidedesk",
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 3306,
            user=unquote(parsed.username or "root"),
            password=unquote(parsed.password or ""),
            charset=options.get("charset", "utf8mb4"),
            max_connections=pool_size,
            stale_timeout=300,
            timeout=10,
            connect_timeout=5,
        )
        return mysql
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or mysql://")


def bind_models(db: pw.Database, main: bool) -> Shard:
    """Model classes of their own for ``db`` (subclasses, so the base classes stay unbound)."""
    models: dict[str, type[pw.Model]] = {}
    for base in MAIN_MODELS if main else SHARD_MODELS:
        meta = type("Meta", (), {"database": db, "table_name": base._meta.table_name})
        models[base.__name__] = type(base.__name__, (base,), {"Meta": meta,
                                                              "__module__": __name__})
    return Shard(db=db, models=models)


def shard_index(conv_id: str, shard_count: int) -> int:
    """Stable shard of a conversation: crc32 of its id (same answer in every process)."""
    return zlib.crc32(conv_id.encode()) % shard_count


def _add_columns(db: pw.Database, table: str, columns: dict[str, pw.Field]) -> None:
    from playhouse.migrate import MySQLMigrator, SchemaMigrator, SqliteMigrator
    from playhouse.migrate import migrate as run_migrations

    migrator: SchemaMigrator = (SqliteMigrator(db) if isinstance(db, pw.SqliteDatabase)
                                else MySQLMigrator(db))
    present = {c.name for c in db.get_columns(table)}
    run_migrations(*(migrator.add_column(table, name, field)
                     for name, field in columns.items() if name not in present))


def _add_site_columns(db: pw.Database) -> None:
    """issue 16: the shop (site) a visitor and a conversation belong to. Added before
    ``create_tables``, which creates the index on it (SQLite would index the string 'site'
    if the column were missing). Plain SQL, not the migrator: its NOT NULL step rewrites
    SQLite's schema table, which breaks a database in WAL mode; both servers take this."""
    for table in ("visitor", "conversation"):
        if db.table_exists(table) and "site" not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(  # type: ignore[no-untyped-call]
                f"ALTER TABLE {table} ADD COLUMN site VARCHAR(64) NOT NULL DEFAULT 'default'")


_FTS_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS message_fts_ai AFTER INSERT ON message BEGIN "
    "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS message_fts_ad AFTER DELETE ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS message_fts_au AFTER UPDATE OF search_text ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); "
    "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text); END",
)


def _search_index(database: pw.Database) -> None:
    """The full-text index of messages (idempotent): on SQLite an FTS5 trigram table kept in
    step with ``message`` by triggers (every insert, edit and delete, whoever makes it); on
    MariaDB a FULLTEXT index on ``message.search_text``."""
    sql: Any = database.execute_sql  # untyped in peewee
    if isinstance(database, pw.SqliteDatabase):
        exists = sql("SELECT 1 FROM sqlite_master WHERE name = 'message_fts'")
        if exists.fetchone() is None:
            sql("CREATE VIRTUAL TABLE message_fts USING fts5(search_text, "
                           "content='message', content_rowid='id', tokenize='trigram')")
            sql("INSERT INTO message_fts(message_fts) VALUES ('rebuild')")
        for trigger in _FTS_TRIGGERS:
            sql(trigger)
        return
    present = sql("SHOW INDEX FROM message WHERE Key_name = 'message_search_text'")
    if present.fetchone() is None:
        sql("ALTER TABLE message ADD FULLTEXT INDEX message_search_text "
                       "(search_text)")


def migrate(shard: Shard) -> int:
    """Create or upgrade the schema of one shard; returns the schema version now in place."""
    db = shard.db
    with db.connection_context():
        if "Visitor" in shard.models:
            _add_site_columns(db)
        db.create_tables(list(shard.models.values()), safe=True)
        version_model: Any = shard.models["SchemaVersion"]
        row = version_model.select().order_by(version_model.version.desc()).first()
        current = row.version if row else 0
        # Upgrades from older versions go here, one step at a time.
        if 0 < current < 2 and "Visitor" in shard.models:
            _add_columns(db, "visitor", {"name_enc": pw.TextField(null=True),
                                         "phone_enc": pw.TextField(null=True)})
            _add_columns(db, "agent", {"totp_secret_enc": pw.TextField(null=True)})
        if "Conversation" in shard.models:
            # issue 13: the idle sweep and the tickets routed again look conversations up by
            # state (and the quietest first)
            db.execute_sql(  # type: ignore[no-untyped-call]
                "CREATE INDEX IF NOT EXISTS conversation_state_updated "
                "ON conversation (state, updated_at)")
        if "Ticket" in shard.models:
            # issue 13: tickets have an assignee and a last change
            _add_columns(db, "ticket", {"assignee_id": pw.CharField(max_length=32, null=True),
                                        "updated_at": pw.DoubleField(null=True)})
        # issue 15: attachments on messages (new tables come from create_tables above)
        _add_columns(db, "message", {"attachments": pw.TextField(null=True)})
        if "Agent" in shard.models:
            _add_columns(db, "agent", {"invite_hash": pw.CharField(max_length=64, null=True),
                                       "invite_expires": pw.DoubleField(null=True)})
        if "CannedResponse" in shard.models:
            # issue 16: personal canned responses (nullable, so the migrator adds it as is).
            _add_columns(db, "cannedresponse", {"owner_id": pw.CharField(max_length=32,
                                                                         null=True)})
        # issue 14: search, contacts' context and identify, labels.
        _add_columns(db, "message", {"search_text": pw.TextField(null=True)})
        if "Visitor" in shard.models:
            _add_columns(db, "visitor", {"search_tokens": pw.TextField(null=True),
                                         "context": pw.TextField(null=True),
                                         "fields_enc": pw.TextField(null=True),
                                         "external_id": pw.CharField(max_length=128,
                                                                     null=True)})
        _search_index(db)  # issue 14
        if current < SCHEMA_VERSION:
            version_model.create(version=SCHEMA_VERSION)
        return SCHEMA_VERSION

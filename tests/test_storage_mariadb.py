"""History on real MariaDB, sharded by conversation over two databases."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import peewee as pw
import pymysql
import pytest

from tests.support.mariadb import databases
from tidedesk.frames import frame_dicts
from tidedesk.models import shard_index
from tidedesk.storage import Storage, new_id

pytestmark = pytest.mark.mariadb


def row(conv: str, seq: int, client_id: str) -> dict[str, object]:
    return {"conversation_id": conv, "seq": seq, "client_id": client_id, "sender_type": "visitor",
            "sender_id": "v", "sender_name": "", "body": f"m{seq} 你好", "private": False,
            "ts": 1.0 + seq}


def test_sharded_batches_are_idempotent_and_stay_in_their_shard() -> None:
    with databases(2) as urls:
        storage = Storage(urls, pool_size=3)
        try:
            storage.migrate_all()
            convs = [new_id() for _ in range(40)]
            rows = [row(c, s, f"id{s}") for c in convs for s in range(1, 6)]

            async def scenario() -> None:
                await storage.messages.insert(rows)
                await storage.messages.insert(rows[:50])  # a redelivered batch
                for conv in convs:
                    got = frame_dicts(await storage.messages.page(conv, after_seq=2))
                    assert [m["seq"] for m in got] == [3, 4, 5]
                    assert got[0]["body"] == "m3 你好"
                    assert await storage.messages.max_seq(conv) == 5
                    back = frame_dicts(await storage.messages.page(conv, before_seq=5, limit=2))
                    assert [m["seq"] for m in back] == [3, 4]

            asyncio.run(scenario())
            # Every conversation's rows are in exactly its own shard, and only once.
            per_shard = Counter(shard_index(c, 2) for c in convs)
            assert set(per_shard) == {0, 1}, "40 ids should land in both shards"
            for index, url in enumerate(urls):
                conn = pymysql.connect(host="127.0.0.1", user="root", password="",
                                       database=url.rsplit("/", 1)[1])
                with conn.cursor() as cur:
                    cur.execute("SELECT COUNT(*), COUNT(DISTINCT conversation_id) FROM message")
                    count, distinct = cur.fetchone()
                conn.close()
                assert (count, distinct) == (per_shard[index] * 5, per_shard[index])
        finally:
            storage.close()


def test_breaker_opens_when_the_database_is_unreachable() -> None:
    from tidedesk.errors import StorageUnavailable

    storage = Storage(["mysql://root@127.0.0.1:9/nowhere"], pool_size=1)
    try:
        async def scenario() -> None:
            for _ in range(5):
                with pytest.raises(StorageUnavailable, match="database is unavailable"):
                    await storage.messages.max_seq("c")
            assert not storage.available
            with pytest.raises(StorageUnavailable, match="circuit open"):
                await storage.messages.max_seq("c")

        asyncio.run(scenario())
    finally:
        storage.close()


def test_the_pool_runs_queries_in_parallel_behind_the_breaker() -> None:
    """issue 17: pybreaker held its lock for the whole call, one query at a time."""
    with databases(1) as urls:
        storage = Storage(urls, pool_size=4)

        def slow() -> None:
            with storage.main.db.connection_context():
                storage.main.db.execute_sql("SELECT SLEEP(0.5)")

        async def scenario() -> float:
            await storage.run(slow)  # the pool's first connection made outside the timing
            t0 = time.perf_counter()
            await asyncio.gather(*(storage.run(slow) for _ in range(4)))
            return time.perf_counter() - t0

        try:
            took = asyncio.run(scenario())
        finally:
            storage.close()
        assert took < 1.5, f"4 queries of 0.5 s took {took:.2f} s: run one at a time"


def test_schema_1_upgrades_and_sensitive_fields_are_only_ciphertext_in_the_tables() -> None:
    import base64

    from tidedesk.crypto import FieldCipher

    secrets = ["Legacy Larry", "Zelda Quimby", "zelda@example.org", "+44 20 7946 0958",
               "quokka card 4242"]
    with databases(1) as urls:
        name = urls[0].rsplit("/", 1)[1]
        plain = Storage(urls, pool_size=1)
        try:
            plain.migrate_all()
        finally:
            plain.close()
        conn = pymysql.connect(host="127.0.0.1", user="root", password="", database=name,
                               autocommit=True)
        try:
            with conn.cursor() as cur:  # back to schema 1, with a visitor of that time
                cur.execute("ALTER TABLE visitor DROP COLUMN name_enc, DROP COLUMN phone_enc")
                cur.execute("UPDATE schemaversion SET version = 1")
                cur.execute("INSERT INTO visitor (id, name, tags, locale, created_at) "
                            "VALUES ('old', 'Legacy Larry', '', 'en', 0)")
            storage = Storage(urls, pool_size=1, encrypt_bodies=True,
                              cipher=FieldCipher(base64.b64encode(b"k" * 32).decode()))
            try:
                assert storage.migrate_all() == 2

                async def scenario() -> None:
                    vid = await storage.visitors.create(name="Zelda Quimby",
                                                       email="zelda@example.org",
                                                       phone="+44 20 7946 0958", tags=[],
                                                       locale="en")
                    conv = new_id()
                    await storage.messages.insert([{**row(conv, 1, "a"), "sender_name": "Zelda",
                                                    "body": "quokka card 4242"}])
                    stored = frame_dicts(await storage.messages.page(conv))
                    assert stored[0]["body"] == "quokka card 4242"
                    assert (await storage.visitors.get(vid)).phone == "+44 20 7946 0958"
                    assert (await storage.visitors.get("old")).name == "Legacy Larry"

                asyncio.run(scenario())
                assert storage.rotate_key_sync() == {"visitor_fields": 1, "agent_secrets": 0,
                                                     "message_bodies": 0,
                                                     "attachment_fields": 0}
            finally:
                storage.close()
            with conn.cursor() as cur:
                dump = []
                for table in ("visitor", "message", "auditlog"):
                    cur.execute(f"SELECT * FROM `{table}`")
                    dump += [str(v) for r in cur.fetchall() for v in r]
            text = "\n".join(dump)
            assert "v2:" in text
            for secret in secrets:
                assert secret not in text, secret
        finally:
            conn.close()


def _session_status(db: object, name: str) -> int:
    cur = db.cursor()  # type: ignore[attr-defined]
    cur.execute("SHOW SESSION STATUS LIKE %s", (name,))
    return int(cur.fetchone()[1])


def test_the_pool_neither_pings_nor_rolls_back_a_connection_in_steady_use() -> None:
    # issue 17: peewee's pool pinged on every check-out and rolled back on every check-in
    # (three round trips for a one-row read). A connection back within a second is handed out
    # as it is; one left inside a transaction is still rolled back; one the server closed is
    # replaced after its idle second, and one that failed a query is dropped at once.
    from tidedesk import models
    from tidedesk.models import open_database

    with databases(1) as urls:
        db = open_database(urls[0], pool_size=1)
        try:
            with db.connection_context():
                first = db.connection()
                thread_id = first.thread_id()
            for _ in range(5):
                with db.connection_context():
                    assert db.connection() is first
                    db.execute_sql("SELECT 1")
            with db.connection_context():
                # Com_rollback counts this session's ROLLBACKs; Questions counts statements and
                # pings alike (six check-outs, each with one statement, the status reads apart).
                assert _session_status(db, "Com_rollback") == 0
                questions = _session_status(db, "Questions")
            with db.connection_context():
                assert _session_status(db, "Questions") == questions + 1  # no ping between
                db.execute_sql("BEGIN")
                db.execute_sql("SELECT 1")
            with db.connection_context():
                assert not (db.connection().server_status
                            & models.SERVER_STATUS.SERVER_STATUS_IN_TRANS), \
                    "a connection handed back inside a transaction must be rolled back"
                assert _session_status(db, "Com_rollback") == 1

            # The server closes the connection while it sits in the pool for over a second:
            # the ping on check-out finds it gone and a new one is opened, no query fails.
            killer = pymysql.connect(host="127.0.0.1", user="root", password="")
            with killer.cursor() as cur:
                cur.execute(f"KILL {thread_id}")
            time.sleep(models.POOL_PING_IDLE_SECS + 0.2)
            with db.connection_context():
                assert db.execute_sql("SELECT 1").fetchone() == (1,)
                second = db.connection()
                assert second is not first
                second_id = second.thread_id()
            # Closed within the idle second: the next query fails once (as during any outage),
            # and the broken connection is not handed out again.
            with killer.cursor() as cur:
                cur.execute(f"KILL {second_id}")
            killer.close()
            with pytest.raises(pw.OperationalError), db.connection_context():
                db.execute_sql("SELECT 1")
            with db.connection_context():
                assert db.execute_sql("SELECT 1").fetchone() == (1,)
                assert db.connection() is not second
        finally:
            db.close_all()

"""History on real MariaDB, sharded by conversation over two databases."""

from __future__ import annotations

import asyncio
from collections import Counter

import pymysql
import pytest

from tests.mariadb import databases
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
                await storage.insert_messages(rows)
                await storage.insert_messages(rows[:50])  # a redelivered batch
                for conv in convs:
                    got = await storage.messages(conv, after_seq=2)
                    assert [m["seq"] for m in got] == [3, 4, 5]
                    assert got[0]["body"] == "m3 你好"
                    assert await storage.max_seq(conv) == 5
                    back = await storage.messages(conv, before_seq=5, limit=2)
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
                    await storage.max_seq("c")
            assert not storage.available
            with pytest.raises(StorageUnavailable, match="circuit open"):
                await storage.max_seq("c")

        asyncio.run(scenario())
    finally:
        storage.close()

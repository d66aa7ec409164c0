"""Full-text search at the storage layer, on SQLite (FTS5 trigram) and on two real MariaDB
shards (FULLTEXT over words and CJK pairs): English and Chinese words are found, in every
shard, within a scope; the index follows batches, redeliveries, edits and erasure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mariadb import databases
from tidedesk import useragent
from tidedesk.models import shard_index
from tidedesk.search_text import index_terms, matches, query_terms, snippet
from tidedesk.storage import Storage, new_id

BODIES = ["我想退货，订单号 1234", "Where is my invoice?", "需要开发票 please",
          "退请货 is not the word", "Refunds take three days"]


@contextlib.contextmanager
def _storage(kind: str, tmp_path: Path) -> Iterator[Storage]:
    if kind == "sqlite":
        storage = Storage([f"sqlite:///{tmp_path}/search.db"])
        try:
            storage.migrate_all()
            yield storage
        finally:
            storage.close()
        return
    with databases(2) as urls:
        storage = Storage(urls, pool_size=2)
        try:
            storage.migrate_all()
            storage.migrate_all()  # idempotent: the index is made once
            yield storage
        finally:
            storage.close()


def _rows(convs: list[str]) -> list[dict[str, object]]:
    return [{"conversation_id": conv, "seq": seq, "client_id": f"c{seq}",
             "sender_type": "visitor", "sender_id": "v", "sender_name": "", "body": body,
             "private": False, "ts": 100.0 + i * 10 + seq}
            for i, conv in enumerate(convs) for seq, body in enumerate(BODIES, 1)]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_english_and_chinese_words_are_found_in_every_shard_and_follow_every_write(
        kind: str, tmp_path: Path) -> None:
    with _storage(kind, tmp_path) as storage:
        convs = [new_id() for _ in range(12)]
        assert {shard_index(c, 2) for c in convs} == {0, 1}
        rows = _rows(convs)
        storage.messages.insert_sync(rows)
        storage.messages.insert_sync(rows[:20])  # a redelivered batch stores nothing twice

        def found(q: str, scope: list[str] | None = None) -> list[tuple[str, int]]:
            hits = storage.search.messages_sync(query_terms(q), 100, scope)
            return sorted((h.conversation_id, h.seq) for h in hits)

        every = sorted(convs)
        assert found("退货") == [(c, 1) for c in every]
        assert found("发票") == [(c, 3) for c in every]
        assert found("开发票") == [(c, 3) for c in every]
        assert found("invoice") == [(c, 2) for c in every]
        assert found("REFUNDS three") == [(c, 5) for c in every]
        assert found("退货请") == [] and found("nothing") == []
        assert found("1234 退货") == [(c, 1) for c in every]
        assert found("退货", convs[:2]) == sorted((c, 1) for c in convs[:2])
        assert found("退货", []) == []
        # Edits and erasure: the index follows.
        assert storage.messages.edit_body_sync(convs[0], 2, "my 发票 is here")
        assert (convs[0], 2) not in found("invoice") and len(found("invoice")) == 11
        assert (convs[0], 2) in found("发票")
        assert storage.messages.delete_conversations_sync(convs[:3]) == 15
        assert found("退货") == sorted((c, 1) for c in convs[3:])
        conv = storage.main["Conversation"]
        with storage.main.db.connection_context():
            conv.create(id=convs[3], visitor_id="v-erased")
        assert storage.messages.delete_visitor_sync("v-erased") == 5
        assert found("退货") == sorted((c, 1) for c in convs[4:])


def test_what_is_indexed_and_how_it_matches() -> None:
    assert index_terms("退货 Refund!") == "refund z9000x8d27"
    assert query_terms(" Refund  退货 refund ") == ["refund", "退货"]
    assert matches("我想退货", ["退货"]) and not matches("退请货", ["退货"])
    text, marks = snippet("x" * 300 + " 我想退货 " + "y" * 300, ["退货"])
    assert text.startswith("…") and text.endswith("…")
    assert [text[a:b] for a, b in marks] == ["退货"]


def test_browser_and_system_from_the_user_agent() -> None:
    assert useragent.parse("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                           "(KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0") == (
        "Edge 120", "macOS 10.15")
    assert useragent.parse("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 "
                           "Firefox/121.0") == ("Firefox 121", "Linux")
    assert useragent.parse("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                           "Chrome/120.0 Mobile Safari/537.36 MicroMessenger/8.0.44") == (
        "WeChat 8", "Android 14")
    assert useragent.parse("curl/8.0") == ("", "")


def test_who_reads_which_conversation() -> None:
    from chatnode.access import may_read, view_scope

    pools = ("general",)
    # (role, state, pool, holder) -> may the agent "7" read it
    matrix = {
        ("agent", "assigned", "general", "7"): True,
        ("agent", "closed", "general", "7"): True,
        ("agent", "assigned", "general", "8"): False,
        ("agent", "closed", "general", "8"): False,
        ("agent", "queued", "general", None): True,
        ("agent", "offline", "general", None): True,
        ("agent", "queued", "billing", None): False,
        ("supervisor", "assigned", "billing", "8"): True,
        ("admin", "closed", "billing", "8"): True,
    }
    for (role, state, pool, holder), expected in matrix.items():
        assert may_read(role, "7", pools, state, pool, holder) is expected, (role, state, pool)
    assert view_scope("mine", "agent", "7", pools).owner == "7"
    assert view_scope("unassigned", "agent", "7", pools).pools == pools
    assert view_scope("unassigned", "supervisor", "7", pools).pools is None
    assert view_scope("closed", "agent", "7", pools).owner == "7"
    assert view_scope("open", "agent", "7", pools).readable_by == ("7", pools)
    assert view_scope("open", "admin", "7", pools).readable_by is None


def test_contacts_are_found_by_blinded_tokens_and_again_after_a_key_rotation(
        tmp_path: Path) -> None:
    import asyncio
    import base64
    import os

    from tidedesk.crypto import FieldCipher

    old, new = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    url = f"sqlite:///{tmp_path}/contacts.db"
    storage = Storage([url], cipher=FieldCipher(old), encrypt_bodies=True)
    storage.migrate_all()
    visitor_id = asyncio.run(storage.visitors.create(name="张三丰", email="zhang@example.com",
                                                     tags=[], locale="zh-CN"))
    row = storage.main["Visitor"].get_by_id(visitor_id)
    assert "zhang" not in (row.search_tokens or "") and "张" not in (row.search_tokens or "")
    # Bodies stored encrypted are not indexed.
    storage.messages.insert_sync([{"conversation_id": "c1", "seq": 1, "client_id": "a",
                                   "sender_type": "visitor", "sender_id": visitor_id,
                                   "sender_name": "", "body": "我想退货", "private": False,
                                   "ts": 1.0}])
    assert storage.search.messages_sync(query_terms("退货"), 10, None) == []
    assert storage.search.contacts_sync(query_terms("张三"), 10, None) == [visitor_id]
    assert storage.search.contacts_sync(query_terms("ZHANG@example.com"), 10, None) == [
        visitor_id]
    assert storage.search.contacts_sync(query_terms("李四"), 10, None) == []
    storage.close()
    rotated = Storage([url], cipher=FieldCipher(new, previous=[old]), encrypt_bodies=True)
    try:
        assert rotated.search.contacts_sync(query_terms("张三"), 10, None) == []
        rotated.rotate_key_sync()
        assert rotated.search.contacts_sync(query_terms("张三"), 10, None) == [visitor_id]
    finally:
        rotated.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_messages_stored_before_search_are_found_after_a_reindex(kind: str,
                                                                 tmp_path: Path) -> None:
    with _storage(kind, tmp_path) as storage:
        convs = [new_id() for _ in range(4)]
        storage.messages.insert_sync(_rows(convs))
        for shard in storage.shards:  # as a database from before issue 14 holds them
            msg = shard["Message"]
            with shard.db.connection_context():
                msg.update(search_text=None).execute()
        assert storage.search.messages_sync(query_terms("发票"), 10, None) == []
        assert storage.reindex_search_sync()["messages"] == 20
        assert len(storage.search.messages_sync(query_terms("发票"), 10, None)) == 4
        assert storage.reindex_search_sync()["messages"] == 0

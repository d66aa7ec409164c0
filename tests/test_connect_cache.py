"""The connect cache (issue 17, ``tidedesk/connect_cache.py``): a visitor's connect reads no
MariaDB, and every write that changes what hello says makes the next connect read it again.

Against MariaDB (a throwaway database) and both stores: the real Redis (a key prefix of the
test's own) and MemoryStore (embedded mode). Each invalidation is driven through the
repository method the real path calls (named in each case), then the cache must answer what
the database says. The end-to-end test runs the real paths (first message, routing, transfer,
close, a mail reply reopening, erasure) on an embedded server whose store is Redis.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import (
    Http,
    add_agent,
    agent_socket,
    embedded,
    wait_agent_online,
    ws,
)
from tests.support.forward import forwarding
from tests.support.mariadb import databases
from tests.support.processes import free_port
from tests.support.redis_keys import REDIS_URL, delete_prefix
from tests.support.routing import GENERAL_ONLY
from tests.support.waiting import wait_until_async
from tidedesk.auth import Principal
from tidedesk.connect_cache import (
    ConnectCache,
    OpenConversation,
    Presence,
    VisitorCard,
    cache_key,
)
from tidedesk.crypto import FieldCipher
from tidedesk.redisstore import RedisStore
from tidedesk.storage import Storage
from tidedesk.store import MemoryStore, Store

CIPHER = FieldCipher(base64.b64encode(os.urandom(32)).decode())


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with databases(1) as urls:
        storage = Storage(urls, pool_size=1)
        storage.migrate_all()
        storage.close()
        yield urls[0]


Body = Callable[[ConnectCache, Storage, Store, str], Awaitable[None]]


def _run(kind: str, url: str, body: Body) -> None:
    async def main() -> None:
        prefix = f"tidedesk-test:{uuid.uuid4().hex}:"
        store: Store = MemoryStore() if kind == "memory" else RedisStore(REDIS_URL, prefix)
        storage = Storage([url], pool_size=2, cipher=CIPHER)
        await store.start()
        try:
            await body(ConnectCache(store, storage), storage, store, prefix)
        finally:
            await store.close()
            storage.close()
            if kind == "redis":
                await delete_prefix(prefix)

    asyncio.run(main())


STORES = pytest.mark.parametrize("kind", ["redis", "memory"])


async def _visitor(storage: Storage, name: str = "Vera") -> str:
    return await storage.visitors.create(name=name, email=None, tags=["vip"], locale="zh")


async def _hit(cache: ConnectCache, visitor_id: str) -> VisitorCard | None:
    """The card, asserting it came from the cache (no database read)."""
    hits = cache.hits
    card = await cache.card(visitor_id)
    assert cache.hits == hits + 1, "expected a cache hit"
    return card


async def _miss(cache: ConnectCache, visitor_id: str) -> VisitorCard | None:
    """The card, asserting the cache had forgotten it (read from the database)."""
    misses = cache.misses
    card = await cache.card(visitor_id)
    assert cache.misses == misses + 1, "expected a miss: the write should have forgotten it"
    return card


def _conv(card: VisitorCard | None) -> OpenConversation | None:
    assert card is not None
    return card.conversation


@STORES
def test_a_hit_registers_presence_in_its_read_and_a_miss_does_not(
        kind: str, database_url: str) -> None:
    """One round trip for a reconnect's card and presence (issue 17, P1): only a hit adds the
    presence; on a miss (and for an unknown visitor) the caller adds it, or nobody does."""
    async def body(cache: ConnectCache, storage: Storage, store: Store, prefix: str) -> None:
        vid = await _visitor(storage)
        who = f"visitor:{vid}"
        here = Presence(who, "conn-1", "node-1", 30.0)
        missed = await cache.card(vid, here)
        assert missed is not None and not missed.present and cache.misses == 1
        assert await store.presence_nodes(who, cache.clock()) == set()
        hit = await cache.card(vid, here)
        assert hit is not None and hit.present and cache.hits == 1
        assert hit.name == "Vera" and hit.conversation is None
        assert await store.presence_nodes(who, cache.clock()) == {"node-1"}
        nobody = uuid.uuid4().hex
        assert await cache.card(nobody, Presence(f"visitor:{nobody}", "c", "node-1", 30.0)) \
            is None
        assert await store.presence_nodes(f"visitor:{nobody}", cache.clock()) == set()
        # An entry it cannot read (another version's) is a miss; the presence the read added
        # is removed again when the database does not know the visitor either.
        await store.kv_set(cache_key(nobody), "[not a card", 60, cache.clock())
        assert await cache.card(nobody, Presence(f"visitor:{nobody}", "c", "node-1", 30.0)) \
            is None
        assert await store.presence_nodes(f"visitor:{nobody}", cache.clock()) == set()

    _run(kind, database_url, body)


@STORES
def test_a_connect_is_served_from_the_cache_and_says_what_the_database_says(
        kind: str, database_url: str) -> None:
    async def body(cache: ConnectCache, storage: Storage, store: Store, prefix: str) -> None:
        vid = await _visitor(storage)
        first = await _miss(cache, vid)
        assert first == VisitorCard(vid, "zh", "Vera", ("vip",), "default", None)
        assert await _hit(cache, vid) == first
        # The name is kept sealed, as the database keeps it.
        raw = await store.kv_get(cache_key(vid), cache.clock())
        assert raw is not None and "Vera" not in raw
        assert await cache.card(uuid.uuid4().hex) is None  # unknown visitor: 401 upstream

    _run(kind, database_url, body)


@STORES
def test_every_write_that_changes_hello_forgets_the_entry(kind: str, database_url: str) -> None:
    async def body(cache: ConnectCache, storage: Storage, store: Store, prefix: str) -> None:
        vid = await _visitor(storage)
        assert _conv(await _miss(cache, vid)) is None  # hello: conversation_id null, "new"
        assert _conv(await _hit(cache, vid)) is None
        # The first message opens the conversation (ChatService via current_for_visitor).
        conv, created = await storage.conversations.current_for_visitor(vid, "default")
        assert created
        assert _conv(await _miss(cache, vid)) == OpenConversation(conv.id, "queued", conv.pool)
        # Routed to a pool, assigned (router.py and assignments.py: conversations.update).
        await storage.conversations.update(conv.id, state="queued", pool="general")
        assert _conv(await _miss(cache, vid)) == OpenConversation(conv.id, "queued", "general")
        await storage.conversations.update(conv.id, state="assigned", agent_id="7")
        assert _conv(await _miss(cache, vid)) == OpenConversation(conv.id, "assigned",
                                                                  "general")
        # Transferred to another pool (routernode/lifecycle.py).
        await storage.conversations.update(conv.id, state="queued", pool="billing",
                                           agent_id=None)
        assert _conv(await _miss(cache, vid)) == OpenConversation(conv.id, "queued", "billing")
        # A ticket (nobody there), then closed: hello says "new" again.
        await storage.conversations.update(conv.id, state="offline", pool="billing")
        assert _conv(await _miss(cache, vid)) == OpenConversation(conv.id, "offline",
                                                                  "billing")
        await storage.conversations.update(conv.id, state="closed")
        assert _conv(await _miss(cache, vid)) is None
        assert _conv(await _hit(cache, vid)) is None
        # A mail reply reopens it (the router routes it again: conversations.update).
        await storage.conversations.update(conv.id, state="queued", pool="general")
        assert _conv(await _miss(cache, vid)) == OpenConversation(conv.id, "queued", "general")
        await storage.conversations.update(conv.id, state="closed")
        assert _conv(await _miss(cache, vid)) is None
        # Retention deletes the closed conversation (routernode/retention.py).
        assert await storage.conversations.delete([conv.id]) == 1
        assert _conv(await _miss(cache, vid)) is None
        # Contact fields (the offline form), identify's context, erasure (chatnode/privacy.py).
        assert await storage.visitors.update_contact(vid, name="Vera Li")
        card = await _miss(cache, vid)
        assert card is not None and card.name == "Vera Li"
        await storage.visitors.set_context(vid, {"page_url": "https://shop.test/"})
        await _miss(cache, vid)
        assert await storage.visitors.erase(vid) == 1
        erased = await _miss(cache, vid)
        assert erased == VisitorCard(vid, "zh", "", (), "default", None)
        assert await _hit(cache, vid) == erased

    _run(kind, database_url, body)


def test_a_redis_wipe_falls_back_to_mariadb_and_refills(database_url: str) -> None:
    async def body(cache: ConnectCache, storage: Storage, store: Store, prefix: str) -> None:
        vid = await _visitor(storage)
        conv, _ = await storage.conversations.current_for_visitor(vid, "default")
        before = await _miss(cache, vid)
        assert await delete_prefix(prefix) >= 1  # what a FLUSHALL does to this test's keys
        after = await _miss(cache, vid)
        assert after == before and _conv(after) == OpenConversation(conv.id, "queued", conv.pool)
        assert await _hit(cache, vid) == before

    _run("redis", database_url, body)


@STORES
def test_a_read_racing_a_write_does_not_put_the_old_answer_back(
        kind: str, database_url: str) -> None:
    """The lease: a miss read the database before a write committed, the write's forget came
    before the miss stored what it read; the stale answer must not be kept."""

    async def body(cache: ConnectCache, storage: Storage, store: Store, prefix: str) -> None:
        vid = await _visitor(storage)
        conv, _ = await storage.conversations.current_for_visitor(vid, "default")
        read = storage.conversations.open_for_visitor

        async def read_then_a_write_lands(visitor_id: str) -> Any:
            found = await read(visitor_id)  # the old state: queued
            await storage.conversations.update(conv.id, state="closed")
            return found

        storage.conversations.open_for_visitor = read_then_a_write_lands  # type: ignore[method-assign]
        stale = await _miss(cache, vid)
        storage.conversations.open_for_visitor = read  # type: ignore[method-assign]
        assert _conv(stale) == OpenConversation(conv.id, "queued", conv.pool)  # what it read
        assert _conv(await _miss(cache, vid)) is None  # not kept: the next read is right
        assert _conv(await _hit(cache, vid)) is None

        # Two misses at once: one fills, the other reads the database without filling.
        await cache.forget([vid])
        both = await asyncio.gather(cache.card(vid), cache.card(vid))
        assert both[0] == both[1]
        assert _conv(await _hit(cache, vid)) is None

    _run(kind, database_url, body)


def test_a_forget_the_store_missed_is_taken_once_it_is_back(database_url: str) -> None:
    """Redis unreachable during a write (a forwarder in front of it, closed): the write is
    kept, and the entry is forgotten as soon as Redis answers again, not left for the TTL (a
    Redis restarted with its data would otherwise serve the old answer)."""
    port = free_port()
    prefix = f"tidedesk-test:{uuid.uuid4().hex}:"

    async def main() -> None:
        storage = Storage([database_url], pool_size=2, cipher=CIPHER)
        store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix)
        cache = ConnectCache(store, storage)
        try:
            with forwarding(port, 6379):
                await store.start()
                vid = await _visitor(storage)
                conv, _ = await storage.conversations.current_for_visitor(vid, "default")
                assert _conv(await _miss(cache, vid)) is not None
            await storage.conversations.update(conv.id, state="closed")  # Redis is away
            with forwarding(port, 6379):
                await wait_until_async("the store to answer again", _answers(store), 10,
                                       every=0.2)
                assert _conv(await _miss(cache, vid)) is None
        finally:
            await store.close()
            storage.close()
            await delete_prefix(prefix)

    asyncio.run(main())


def _answers(store: Store) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        try:
            await store.kv_get("probe", 0.0)
        except Exception:
            return False
        return True

    return probe


def test_an_entry_this_version_cannot_read_is_a_miss(database_url: str) -> None:
    async def body(cache: ConnectCache, storage: Storage, store: Store, prefix: str) -> None:
        vid = await _visitor(storage)
        await store.kv_set(cache_key(vid), '{"not": "a card"}', 60, cache.clock())
        card = await _miss(cache, vid)
        assert card is not None and card.name == "Vera"
        # Still the garbage, never overwritten by a lease: the next read misses again.
        await _miss(cache, vid)

    _run("redis", database_url, body)


# -- end to end: the real paths on an embedded server whose store is Redis --------------------

@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"tidedesk-test:{uuid.uuid4().hex}:"
    yield prefix
    asyncio.run(delete_prefix(prefix))


async def _hello(runtime: Any, token: str) -> dict[str, Any]:
    client = await ws(runtime, "/ws/visitor", token)
    hello = await client.wait_type("hello")
    await client.close()
    return hello


def test_the_real_paths_keep_hello_right_on_redis(tmp_path: Path, redis_prefix: str) -> None:
    """First message, routing, close, a mail reply reopening the chat, a Redis wipe: after each,
    a new socket's hello says what the database says, and reconnects in between are hits."""

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, redis_url=REDIS_URL,
                            redis_prefix=redis_prefix) as rt:
            assert isinstance(rt.store, RedisStore)
            service = rt.node.service
            cache = service.conversations.connect_cache
            ann = add_agent(rt, "ann@shop.test")
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            status, data = await Http(rt).request("POST", "/api/v1/visitors", {"name": "Vera"})
            assert status == 201, data
            vid, token = data["visitor_id"], data["token"]

            first = await _hello(rt, token)
            assert (first["conversation_id"], first["state"]) == (None, "new")
            hits = cache.hits
            assert (await _hello(rt, token))["state"] == "new" and cache.hits == hits + 1

            client = await ws(rt, "/ws/visitor", token)
            await client.wait_type("hello")
            assert (await client.say("Hello"))["type"] == "ack"
            conv_id = (await agent.wait_type("assigned"))["conversation_id"]
            await client.wait_type("assigned")
            await client.close()

            async def hello_says(conv: str | None, state: str) -> None:
                async def right() -> bool:
                    hello = await _hello(rt, token)
                    return (hello["conversation_id"], hello["state"]) == (conv, state)

                await wait_until_async(f"hello to say {conv} {state}", right, 5, every=0.05)

            await hello_says(conv_id, "assigned")
            hits = cache.hits
            await hello_says(conv_id, "assigned")
            assert cache.hits == hits + 1

            await agent.send({"type": "close", "conversation_id": conv_id})
            await agent.wait_type("closed", conversation_id=conv_id)
            # The router's update forgot the entry: the very next connect is right.
            assert (await storage_state(rt, conv_id)) == "closed"
            hello = await _hello(rt, token)
            assert (hello["conversation_id"], hello["state"]) == (None, "new")

            # A mail reply reopens the closed chat; the router routes it to Ann again.
            await service.post_mail_reply(conv_id, vid, "mail-1", "one more question")
            await agent.wait_type("assigned", conversation_id=conv_id, timeout=10)
            await hello_says(conv_id, "assigned")

            # A Redis wipe of the cache: the next connect reads MariaDB and refills.
            assert await delete_prefix(redis_prefix + "kv:connect:") == 1
            misses = cache.misses
            hello = await _hello(rt, token)
            assert (hello["conversation_id"], hello["state"]) == (conv_id, "assigned")
            assert cache.misses == misses + 1
            assert await rt.store.kv_get(cache_key(vid), cache.clock()) is not None

            # Erasure (chatnode/privacy.py, what DELETE /api/v1/contacts/{id} runs; an admin
            # needs a second factor in cluster mode, not the point here) forgets the entry too.
            admin = add_agent(rt, "root@shop.test", role="admin")
            await service.privacy.erase(Principal(kind="agent", id=admin, role="admin"), vid)
            assert await rt.store.kv_get(cache_key(vid), cache.clock()) is None
            await agent.close()

    asyncio.run(scenario())


async def storage_state(rt: Any, conv_id: str) -> str:
    conv = await rt.storage.conversations.get(conv_id)
    assert conv is not None
    return str(conv.state)


def test_a_router_process_forgets_entries_too(tmp_path: Path) -> None:
    """A router alone (no chat node in its process) still forgets what its writes change."""
    from tidedesk.runtime import Runtime
    from tidedesk.settings import load_settings

    settings = load_settings(env={}, data_dir=str(tmp_path / "data"), port=0)
    runtime = Runtime(settings, "router")
    try:
        assert runtime.connect_cache is not None
        assert runtime.storage.database.visitor_listeners == [runtime.connect_cache.forget]
    finally:
        runtime.storage.close()

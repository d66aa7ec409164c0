"""One contract for the store seam, run against MemoryStore and RedisStore.

The Redis runs use the real server on 127.0.0.1:6379 with a key prefix unique to each test, and
delete every key under that prefix afterwards (never FLUSHALL: the server is shared).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.redis_keys import REDIS_URL, delete_prefix
from tidedesk.redisstore import RedisStore
from tidedesk.store import (
    CHECK_DATABASE,
    CLIENT_ID_FILTER_BITS,
    CLIENT_ID_TTL_SECS,
    CLIENT_IDS_PER_CONVERSATION,
    HISTORY_STREAM_LEN,
    MemoryStore,
    Store,
)

Body = Callable[[Store], Awaitable[None]]
Runner = Callable[[Body], None]


def _runner(kind: str) -> Runner:
    def run(body: Body) -> None:
        async def main() -> None:
            prefix = f"tidedesk-test:{uuid.uuid4().hex}:"
            store: Store = MemoryStore() if kind == "memory" else RedisStore(REDIS_URL, prefix)
            await store.start()
            try:
                await body(store)
            finally:
                await store.close()
                if kind == "redis":
                    await delete_prefix(prefix)

        asyncio.run(main())

    return run


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def run(request: pytest.FixtureRequest) -> Runner:
    """Call ``run(async_body)``: a fresh, empty store inside a fresh event loop."""
    return _runner(request.param)


# -- sequence numbers ---------------------------------------------------------------------

def test_assign_seq_is_none_until_seeded(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.assign_seq("c1", "m1", now=0) is None
        assert await s.last_seq("c1") is None
        await s.seed_seq("c1", 0)
        assert await s.last_seq("c1") == 0
        assert await s.assign_seq("c1", "m1", now=0) == (1, True)
        assert await s.last_seq("c1") == 1
        assert await s.assign_seq("c2", "m1", now=0) is None  # counters are per conversation

    run(body)


def test_assign_seq_is_idempotent_on_client_id(run: Runner) -> None:
    async def body(s: Store) -> None:
        await s.seed_seq("c", 40)  # above 0: the store lost it, so it knows no ids of "c"
        assert await s.assign_seq("c", "a", now=1) == CHECK_DATABASE
        assert await s.assign_seq("c", "a", now=1, checked=True) == (41, True)
        assert await s.assign_seq("c", "b", now=2, checked=True) == (42, True)
        assert await s.assign_seq("c", "a", now=3) == (41, False)
        assert await s.assign_seq("c", "b", now=4) == (42, False)
        assert await s.last_seq("c") == 42
        # the same client id in another conversation is another message
        await s.seed_seq("d", 0)
        assert await s.assign_seq("d", "a", now=5) == (1, True)
        # ids are remembered while the conversation is written to within CLIENT_ID_TTL_SECS;
        # after a quiet window the store says to ask the database's key
        assert await s.assign_seq("c", "a", now=2 + CLIENT_ID_TTL_SECS - 1) == (41, False)
        assert await s.assign_seq("c", "a", now=2 + CLIENT_ID_TTL_SECS + 1) == CHECK_DATABASE
        assert await s.assign_seq("c", "a", now=2 + CLIENT_ID_TTL_SECS + 1,
                                  checked=True) == (43, True)
        assert await s.assign_seq("c", "a", now=2 + CLIENT_ID_TTL_SECS + 2) == (43, False)

    run(body)


def test_seed_seq_never_lowers(run: Runner) -> None:
    async def body(s: Store) -> None:
        await s.seed_seq("c", 10)
        await s.seed_seq("c", 3)
        assert await s.last_seq("c") == 10
        assert await s.assign_seq("c", "x", now=0, checked=True) == (11, True)
        await s.seed_seq("c", 11)
        assert await s.assign_seq("c", "y", now=0, checked=True) == (12, True)
        await s.seed_seq("c", 100)
        assert await s.assign_seq("c", "z", now=0, checked=True) == (101, True)

    run(body)


def test_client_id_memory_is_bounded_per_conversation(run: Runner) -> None:
    """Issue 17: the newest CLIENT_IDS_PER_CONVERSATION ids are remembered; an older one, or any
    after a close, makes the store send the caller to the database instead of a new seq."""
    async def body(s: Store) -> None:
        await s.seed_seq("c", 0)
        cap = CLIENT_IDS_PER_CONVERSATION
        for i in range(cap):
            assert await s.assign_seq("c", f"m{i}", now=0) == (i + 1, True)
        assert await s.assign_seq("c", "m0", now=0) == (1, False)  # all still remembered
        assert await s.assign_seq("c", "new", now=0) == (cap + 1, True)  # evicts m0
        assert await s.assign_seq("c", "m0", now=0) == CHECK_DATABASE  # the filter has it
        assert await s.assign_seq("c", "m1", now=0) == (2, False)
        # the filter of every id since seq 0 knows a new id is new: no database read
        assert await s.assign_seq("c", "other", now=0) == (cap + 2, True)
        await s.drop_client_ids("c")  # the conversation closed
        assert await s.assign_seq("c", "m1", now=0) == CHECK_DATABASE
        assert await s.assign_seq("c", "late", now=0, checked=True) == (cap + 3, True)
        assert await s.assign_seq("c", "late", now=0) == (cap + 3, False)
        assert await s.assign_seq("c", "later", now=0) == CHECK_DATABASE  # unsure from now on
        # a counter re-seeded from the database (the store lost it) knows no ids
        await s.seed_seq("d", 7)
        assert await s.assign_seq("d", "x", now=0) == CHECK_DATABASE
        # a new conversation (seeded at 0) needs no database read
        await s.seed_seq("e", 0)
        assert await s.assign_seq("e", "x", now=0) == (1, True)
        if isinstance(s, RedisStore):  # one key a conversation, not one a message
            assert await s._r.zcard(s._prefix + "cids:c") == 1
            assert await s._r.exists(s._prefix + "cids:d") == 0
            assert await s._r.exists(s._prefix + "cidf:c") == 0  # no filter once incomplete
            assert await s._r.strlen(s._prefix + "cidf:e") <= CLIENT_ID_FILTER_BITS // 8

    run(body)


def test_a_long_conversation_asks_the_database_only_for_ids_it_may_have_seen(
        run: Runner) -> None:
    """Issue 17: past CLIENT_IDS_PER_CONVERSATION ids, new ids still take a seq at once (the
    filter), and every forgotten id is sent to the database (a late resend keeps its seq); a
    quiet window drops the filter with the ids."""
    async def body(s: Store) -> None:
        await s.seed_seq("c", 0)
        n = 1000
        asked = [i for i in range(n)
                 if await s.assign_seq("c", f"msg-{i}", now=0) == CHECK_DATABASE]
        for i in asked:  # the database would say "not stored": take a seq
            assert (await s.assign_seq("c", f"msg-{i}", now=0, checked=True))[1]
        assert len(asked) <= 3, asked  # the filter's false alarms (~1 in 500 at 1 000)
        assert await s.last_seq("c") == n
        forgotten = [i for i in range(n - CLIENT_IDS_PER_CONVERSATION)
                     if await s.assign_seq("c", f"msg-{i}", now=0) != CHECK_DATABASE]
        assert forgotten == []  # never a new seq for an id it took
        assert await s.assign_seq("c", f"msg-{n - 1}", now=0) == (n, False)
        # a day without writes: ids and filter forgotten, every id goes to the database
        assert await s.assign_seq("c", "fresh", now=CLIENT_ID_TTL_SECS + 1) == CHECK_DATABASE

    run(body)


def test_concurrent_assign_seq_hands_out_each_seq_once(run: Runner) -> None:
    async def body(s: Store) -> None:
        await s.seed_seq("c", 0)
        ids = [f"m{i}" for i in range(60)] * 2  # every id twice, all at once
        results = await asyncio.gather(*(s.assign_seq("c", m, now=0) for m in ids))
        by_id: dict[str, set[int]] = {}
        fresh = 0
        for m, res in zip(ids, results, strict=True):
            assert res is not None
            by_id.setdefault(m, set()).add(res[0])
            fresh += res[1]
        assert fresh == 60
        assert all(len(seqs) == 1 for seqs in by_id.values())
        assert sorted(next(iter(v)) for v in by_id.values()) == list(range(1, 61))

    run(body)


# -- expiring keys ------------------------------------------------------------------------

def test_kv_expires_at_ttl(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.kv_get("k", now=0) is None
        await s.kv_set("k", "v1", ttl_s=10, now=100)
        assert await s.kv_get("k", now=105) == "v1"
        assert await s.kv_get("k", now=109.999) == "v1"
        assert await s.kv_get("k", now=110) is None
        assert await s.kv_get("k", now=105) is None  # expired means gone
        await s.kv_set("k", "v2", ttl_s=10, now=200)
        await s.kv_set("k", "v3", ttl_s=5, now=201)  # overwriting resets value and TTL
        assert await s.kv_get("k", now=205) == "v3"
        assert await s.kv_get("k", now=206) is None

    run(body)


def test_kv_touch_slides_the_expiry(run: Runner) -> None:
    async def body(s: Store) -> None:
        await s.kv_set("sess", "data ünïcode", ttl_s=10, now=0)
        assert await s.kv_get("sess", now=8, touch_ttl_s=10) == "data ünïcode"
        assert await s.kv_get("sess", now=15) == "data ünïcode"  # would have expired at 10
        assert await s.kv_get("sess", now=17, touch_ttl_s=10) == "data ünïcode"
        assert await s.kv_get("sess", now=26.5) == "data ünïcode"
        assert await s.kv_get("sess", now=27) is None
        assert await s.kv_get("sess", now=27, touch_ttl_s=10) is None  # no resurrection

    run(body)


def test_kv_incr_counts_in_a_fixed_window(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.kv_incr("n", ttl_s=10, now=100) == 1
        assert await s.kv_incr("n", ttl_s=10, now=105) == 2
        assert await s.kv_incr("n", ttl_s=10, now=109.9) == 3  # the window is not extended
        assert await s.kv_get("n", now=109.9) == "3"
        assert await s.kv_incr("n", ttl_s=10, now=110) == 1  # a new window
        assert await s.kv_get("n", now=119.9) == "1"
        assert await s.kv_get("n", now=120) is None
        assert await s.kv_incr("other", ttl_s=10, now=110) == 1

    run(body)


def test_kv_swap_is_compare_and_set(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.kv_swap("fam", None, "a", ttl_s=10, now=0)
        assert not await s.kv_swap("fam", None, "b", ttl_s=10, now=1)  # exists
        assert not await s.kv_swap("fam", "x", "b", ttl_s=10, now=1)  # wrong value
        assert await s.kv_get("fam", now=1) == "a"
        assert await s.kv_swap("fam", "a", "b", ttl_s=10, now=5)
        assert not await s.kv_swap("fam", "a", "c", ttl_s=10, now=6)  # a reused old value
        assert await s.kv_get("fam", now=14.9) == "b"  # the swap gave a fresh TTL
        assert not await s.kv_swap("fam", "b", "c", ttl_s=10, now=15)  # expired = missing
        assert await s.kv_swap("fam", None, "d", ttl_s=10, now=15)
        # Concurrent swaps from one value: exactly one wins.
        results = await asyncio.gather(*(s.kv_swap("fam", "d", f"e{i}", ttl_s=10, now=16)
                                         for i in range(8)))
        assert sum(results) == 1

    run(body)


def test_kv_delete(run: Runner) -> None:
    async def body(s: Store) -> None:
        await s.kv_set("a", "1", ttl_s=60, now=0)
        await s.kv_set("b", "2", ttl_s=60, now=0)
        await s.kv_delete("a")
        await s.kv_delete("a")
        await s.kv_delete("never-set")
        assert await s.kv_get("a", now=1) is None
        assert await s.kv_get("b", now=1) == "2"

    run(body)


# -- presence -----------------------------------------------------------------------------

def test_presence(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.presence_nodes("agent:1", now=0) == set()
        await s.presence_add("agent:1", "conn-a", "node-1", ttl_s=30, now=0)
        await s.presence_add("agent:1", "conn-b", "node-2", ttl_s=60, now=0)
        await s.presence_add("agent:1", "conn-c", "node-2", ttl_s=60, now=0)
        await s.presence_add("visitor:9", "conn-z", "node-3", ttl_s=60, now=0)
        assert await s.presence_nodes("agent:1", now=10) == {"node-1", "node-2"}
        assert await s.presence_nodes("agent:1", now=30) == {"node-2"}  # conn-a timed out
        await s.presence_add("agent:1", "conn-a", "node-1", ttl_s=30, now=40)  # heartbeat
        assert await s.presence_nodes("agent:1", now=50) == {"node-1", "node-2"}
        assert await s.presence_remove("agent:1", "conn-b") == 2
        assert await s.presence_remove("agent:1", "conn-b") == 2  # idempotent
        assert await s.presence_nodes("agent:1", now=50) == {"node-1", "node-2"}
        assert await s.presence_remove("agent:1", "conn-c") == 1
        assert await s.presence_nodes("agent:1", now=50) == {"node-1"}
        assert await s.presence_remove("agent:1", "conn-a") == 0
        assert await s.presence_nodes("agent:1", now=50) == set()
        assert await s.presence_remove("nobody", "conn") == 0
        assert await s.presence_nodes("visitor:9", now=50) == {"node-3"}

    run(body)


def test_kv_get_and_present_adds_presence_only_with_an_answer(run: Runner) -> None:
    """A connect's cache read with its presence (issue 17): a missing, expired or leased key
    reads as kv_get does and adds no presence; a held value adds it, as presence_add would."""
    async def body(s: Store) -> None:
        kw = {"who": "visitor:7", "conn": "c1", "node_id": "node-1", "ttl_s": 30.0,
              "unless_prefix": "lease:"}
        assert await s.kv_get_and_present("card:7", 0, **kw) == (None, False)
        await s.kv_set("card:7", "lease:abc", 5, now=0)
        assert await s.kv_get_and_present("card:7", 1, **kw) == ("lease:abc", False)
        assert await s.presence_nodes("visitor:7", now=1) == set()
        await s.kv_set("card:7", '{"v": "ünï"}', 10, now=0)
        assert await s.kv_get_and_present("card:7", 2, **kw) == ('{"v": "ünï"}', True)
        assert await s.presence_nodes("visitor:7", now=31.9) == {"node-1"}
        assert await s.presence_nodes("visitor:7", now=32) == set()
        assert await s.kv_get_and_present("card:7", 10, **{**kw, "conn": "c2"}) == (None, False)
        assert await s.kv_get("card:7", now=3) is None  # expired means gone
        await s.kv_set("card:7", "x", 100, now=0)
        assert await s.kv_get_and_present("card:7", 5, **{**kw, "conn": "c3"}) == ("x", True)
        assert await s.presence_remove("visitor:7", "c1") == 1
        assert await s.presence_remove("visitor:7", "c3") == 0

    run(body)


def test_presence_leave_marks_the_last_connection_gone(run: Runner) -> None:
    async def body(s: Store) -> None:
        kw = {"gone_key": "gone:7", "gone_value": "12.5", "gone_ttl_s": 20.0, "now": 12.5}
        await s.presence_add("visitor:7", "a", "node-1", ttl_s=30, now=0)
        await s.presence_add("visitor:7", "b", "node-2", ttl_s=30, now=0)
        assert await s.presence_leave("visitor:7", "a", **kw) == 1
        assert await s.kv_get("gone:7", now=13) is None  # one connection is left
        assert await s.presence_nodes("visitor:7", now=13) == {"node-2"}
        await s.kv_set("gone:7", "older", 100, now=0)
        assert await s.presence_leave("visitor:7", "b", **kw) == 0
        assert await s.kv_get("gone:7", now=13) == "12.5"  # replaced, with its own TTL
        assert await s.kv_get("gone:7", now=32.5) is None
        assert await s.presence_nodes("visitor:7", now=13) == set()
        assert await s.presence_leave("nobody", "c", **kw) == 0

    run(body)


# -- agents and ownership -----------------------------------------------------------------

async def _agent(s: Store, agent_id: str, *, max_chats: int = 3, status: str = "online",
                 pools: tuple[str, ...] = ("general",), now: float = 0) -> None:
    await s.agent_update(agent_id, status=status, pools=pools, max_chats=max_chats,
                         name=f"Agent {agent_id}", now=now)


def test_any_agent_in_pools_with_a_status(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert not await s.any_agent_in(["general"], ["online", "away"])
        assert not await s.any_agent_in([], ["online"])
        await _agent(s, "a1", pools=("general",), status="offline")
        await _agent(s, "a2", pools=("experts",), status="away")
        assert not await s.any_agent_in(["general"], ["online", "away"])
        assert await s.any_agent_in(["general", "experts"], ["online", "away"])
        assert not await s.any_agent_in(["general", "experts"], ["online"])
        await _agent(s, "a1", pools=("general",), status="online")
        assert await s.any_agent_in(["general"], ["online"])
        await _agent(s, "a1", pools=("billing",), status="online")  # moved pools
        assert not await s.any_agent_in(["general"], ["online"])

    run(body)


def test_agent_update_and_pools(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.agent_get("a1") is None
        await _agent(s, "a1", pools=("general", "experts"), now=5)
        await _agent(s, "a2", pools=("general",), status="away", max_chats=1, now=6)
        a1 = await s.agent_get("a1")
        assert a1 is not None
        assert (a1.status, a1.open_chats, a1.max_chats, a1.last_assigned_at, a1.name) == (
            "online", 0, 3, 5, "Agent a1")
        assert set(a1.pools) == {"general", "experts"} and a1.has_room
        assert {a.agent_id for a in await s.agents_in_pool("general")} == {"a1", "a2"}
        assert {a.agent_id for a in await s.agents_in_pool("experts")} == {"a1"}
        assert await s.agents_in_pool("nobody-here") == []
        # moving pools leaves the old one; open chats and last assignment survive an update
        assert await s.claim("c1", "a1", now=7)
        await _agent(s, "a1", pools=("training",), max_chats=5, status="away", now=8)
        a1 = await s.agent_get("a1")
        assert a1 is not None
        assert (a1.status, a1.open_chats, a1.max_chats, a1.last_assigned_at, a1.pools) == (
            "away", 1, 5, 7, ("training",))
        assert {a.agent_id for a in await s.agents_in_pool("general")} == {"a2"}
        assert await s.agents_in_pool("experts") == []
        assert [a.agent_id for a in await s.agents_in_pool("training")] == ["a1"]

    run(body)


def test_claim_rules(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert not await s.claim("c0", "ghost", now=0)  # unknown agent
        await _agent(s, "away", status="away")
        await _agent(s, "off", status="offline")
        assert not await s.claim("c0", "away", now=0)
        assert not await s.claim("c0", "off", now=0)
        await _agent(s, "a", max_chats=2)
        assert await s.claim("c1", "a", now=10)
        assert not await s.claim("c1", "a", now=11)  # already owned, even by the same agent
        assert await s.claim("c2", "a", now=12)
        assert not await s.claim("c3", "a", now=13)  # at the limit
        agent = await s.agent_get("a")
        assert agent is not None
        assert (agent.open_chats, agent.last_assigned_at, agent.has_room) == (2, 12, False)
        assert await s.owner("c1") == "a" and await s.owner("c3") is None
        assert await s.agent_conversations("a") == ["c1", "c2"]
        assert await s.agent_conversations("away") == []

    run(body)


def test_release_is_idempotent_and_frees_the_slot(run: Runner) -> None:
    async def body(s: Store) -> None:
        await _agent(s, "a", max_chats=1)
        assert await s.release("c1") is None
        assert await s.claim("c1", "a", now=1)
        assert not await s.claim("c2", "a", now=2)
        assert await s.release("c1") == "a"
        assert await s.release("c1") is None
        assert await s.owner("c1") is None
        assert await s.agent_conversations("a") == []
        agent = await s.agent_get("a")
        assert agent is not None and agent.open_chats == 0
        assert await s.claim("c2", "a", now=3)
        assert await s.agent_conversations("a") == ["c2"]

    run(body)


def test_concurrent_claims_never_exceed_the_limit(run: Runner) -> None:
    async def body(s: Store) -> None:
        await _agent(s, "a", max_chats=3)
        results = await asyncio.gather(*(s.claim(f"c{i}", "a", now=i) for i in range(50)))
        assert sum(results) == 3
        won = sorted(f"c{i}" for i, ok in enumerate(results) if ok)
        assert await s.agent_conversations("a") == won
        agent = await s.agent_get("a")
        assert agent is not None and agent.open_chats == 3
        # claims and releases interleaved at once still balance
        ops = [s.release(c) for c in won] + [s.claim(f"d{i}", "a", now=99) for i in range(20)]
        await asyncio.gather(*ops)
        agent = await s.agent_get("a")
        assert agent is not None
        assert agent.open_chats == len(await s.agent_conversations("a")) <= 3

    run(body)


def test_two_agents_racing_for_one_conversation(run: Runner) -> None:
    async def body(s: Store) -> None:
        for round_ in range(10):
            await _agent(s, f"x{round_}")
            await _agent(s, f"y{round_}")
            conv = f"conv{round_}"
            x, y = await asyncio.gather(s.claim(conv, f"x{round_}", now=0),
                                        s.claim(conv, f"y{round_}", now=0))
            assert x != y
            winner, loser = (f"x{round_}", f"y{round_}") if x else (f"y{round_}", f"x{round_}")
            assert await s.owner(conv) == winner
            loser_load = await s.agent_get(loser)
            assert loser_load is not None and loser_load.open_chats == 0

    run(body)


def test_status_since_changes_only_with_the_status(run: Runner) -> None:
    async def body(s: Store) -> None:
        await _agent(s, "a", now=5)
        await _agent(s, "a", now=9)  # same status again: the heartbeat's re-announce
        a = await s.agent_get("a")
        assert a is not None and a.status_since == 5
        await _agent(s, "a", status="offline", now=12)
        a = await s.agent_get("a")
        assert a is not None and (a.status, a.status_since) == ("offline", 12)

    run(body)


def test_presence_expiry_is_the_latest_live_or_not(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.presence_expiry("agent:1") is None
        await s.presence_add("agent:1", "conn-a", "node-1", ttl_s=30, now=0)
        await s.presence_add("agent:1", "conn-b", "node-2", ttl_s=60, now=5)
        assert await s.presence_expiry("agent:1") == 65
        assert await s.presence_nodes("agent:1", now=70) == set()
        assert await s.presence_expiry("agent:1") == 65  # expired, still known
        await s.presence_remove("agent:1", "conn-a")
        await s.presence_remove("agent:1", "conn-b")
        assert await s.presence_expiry("agent:1") is None

    run(body)


def test_agent_mark_gone_only_without_live_presence_or_newer_update(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert not await s.agent_mark_gone("nobody", updated_at=0, since=0, now=0)
        await _agent(s, "a", status="away", now=10.25)
        await s.presence_add("agent:a", "conn", "node-1", ttl_s=30, now=10.25)
        a = await s.agent_get("a")
        assert a is not None and (a.updated_at, a.lapsed_from) == (10.25, "")
        # a live connection, or an update after the one read: nothing changes
        assert not await s.agent_mark_gone("a", updated_at=10.25, since=40.25, now=40)
        assert not await s.agent_mark_gone("a", updated_at=9, since=40.25, now=50)
        assert await s.agent_mark_gone("a", updated_at=10.25, since=40.25, now=50)
        a = await s.agent_get("a")
        assert a is not None
        assert (a.status, a.status_since, a.lapsed_from) == ("offline", 40.25, "away")
        assert not await s.agent_mark_gone("a", updated_at=10.25, since=60, now=60)  # once
        # the node's next word (a re-announce, a reconnect) is the truth again
        await _agent(s, "a", status="online", now=61)
        a = await s.agent_get("a")
        assert a is not None
        assert (a.status, a.status_since, a.updated_at, a.lapsed_from) == (
            "online", 61, 61, "")

    run(body)


def test_handover_moves_the_owner_within_limits(run: Runner) -> None:
    async def body(s: Store) -> None:
        await _agent(s, "a", max_chats=2)
        await _agent(s, "b", max_chats=1)
        await _agent(s, "off", status="offline")
        assert await s.claim("c1", "a", now=1) and await s.claim("c2", "a", now=1)
        assert await s.handover("c1", "b", "a", now=2) == "not_owner"
        assert await s.handover("c1", "a", "off", now=2) == "no_room"
        assert await s.handover("c1", "a", "a", now=2) == "no_room"
        assert await s.handover("c1", "a", "b", now=3) == "moved"
        assert await s.handover("c2", "a", "b", now=4) == "no_room"  # b is full
        assert (await s.owner("c1"), await s.owner("c2")) == ("b", "a")
        assert await s.agent_conversations("a") == ["c2"]
        assert await s.agent_conversations("b") == ["c1"]
        a, b = await s.agent_get("a"), await s.agent_get("b")
        assert a is not None and b is not None
        assert (a.open_chats, b.open_chats, b.last_assigned_at) == (1, 1, 3)

    run(body)


def test_concurrent_handovers_never_exceed_the_limit(run: Runner) -> None:
    async def body(s: Store) -> None:
        await _agent(s, "a", max_chats=10)
        await _agent(s, "b", max_chats=3)
        for i in range(10):
            assert await s.claim(f"c{i}", "a", now=0)
        results = await asyncio.gather(*(s.handover(f"c{i}", "a", "b", now=1)
                                         for i in range(10)))
        assert results.count("moved") == 3
        b = await s.agent_get("b")
        assert b is not None and b.open_chats == 3 == len(await s.agent_conversations("b"))

    run(body)


def test_release_from_and_requeue_front(run: Runner) -> None:
    async def body(s: Store) -> None:
        await _agent(s, "a")
        await s.enqueue("p", "vip1", True, now=1)
        await s.enqueue("p", "std1", False, now=2)
        assert await s.claim("c1", "a", now=3) and await s.claim("c2", "a", now=3)
        assert await s.claim("c3", "a", now=3)
        assert not await s.release_from("c3", "b")
        assert await s.release_from("c3", "a")
        assert await s.owner("c3") is None
        assert not await s.requeue_front("c1", "b", "p", now=4)
        assert await s.requeue_front("c1", "a", "p", now=5)
        assert await s.requeue_front("c2", "a", "p", now=6)
        assert not await s.requeue_front("c2", "a", "p", now=7)  # already given back
        assert [c for c, _ in await s.waiting("p")] == ["c1", "c2", "vip1", "std1"]
        assert dict(await s.waiting("p"))["c1"] == 5
        a = await s.agent_get("a")
        assert a is not None and a.open_chats == 0 and await s.agent_conversations("a") == []
        assert await s.dequeue("p", "c1")
        assert [c for c, _ in await s.waiting("p")] == ["c2", "vip1", "std1"]

    run(body)


# -- waiting queues -----------------------------------------------------------------------

def test_queue_is_vip_first_then_fifo_and_idempotent(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.waiting("general") == []
        await s.enqueue("general", "a", vip=False, now=1)
        await s.enqueue("general", "b", vip=True, now=2)
        await s.enqueue("general", "c", vip=False, now=3)
        await s.enqueue("general", "a", vip=True, now=4)  # already waiting: no change
        await s.enqueue("general", "d", vip=True, now=5)
        await s.enqueue("experts", "e", vip=False, now=6)
        assert await s.waiting("general") == [("b", 2), ("d", 5), ("a", 1), ("c", 3)]
        assert await s.dequeue("general", "d")
        assert not await s.dequeue("general", "d")
        assert not await s.dequeue("general", "e")  # waits in another pool
        assert await s.waiting("general") == [("b", 2), ("a", 1), ("c", 3)]
        await s.enqueue("general", "d", vip=False, now=7)  # back, at the end of its class
        assert await s.waiting("general") == [("b", 2), ("a", 1), ("c", 3), ("d", 7)]
        assert await s.waiting("experts") == [("e", 6)]

    run(body)


def test_queue_fifo_follows_arrival_not_the_clock(run: Runner) -> None:
    async def body(s: Store) -> None:
        # Routers' clocks differ: serving order is the order the store saw, times are kept.
        await s.enqueue("p", "late-clock", vip=False, now=100.5)
        await s.enqueue("p", "early-clock", vip=False, now=99.25)
        assert await s.waiting("p") == [("late-clock", 100.5), ("early-clock", 99.25)]

    run(body)


_queue_ops = st.lists(
    st.tuples(st.sampled_from(["enqueue", "dequeue"]), st.sampled_from("abcdefgh"),
              st.booleans()),
    max_size=40,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_queue_ops)
def test_queue_order_matches_the_model(run: Runner, ops: list[tuple[str, str, bool]]) -> None:
    """Property: whatever the sequence of enqueues and dequeues, ``waiting`` is VIPs in arrival
    order, then the rest in arrival order, each entry keeping the time of its first enqueue."""

    async def body(s: Store) -> None:
        model: dict[str, tuple[bool, int, float]] = {}
        for step, (op, conv, vip) in enumerate(ops):
            if op == "enqueue":
                await s.enqueue("pool", conv, vip=vip, now=float(step))
                model.setdefault(conv, (vip, step, float(step)))
            else:
                assert await s.dequeue("pool", conv) == (conv in model)
                model.pop(conv, None)
        expected = sorted(model.items(), key=lambda kv: (not kv[1][0], kv[1][1]))
        assert await s.waiting("pool") == [(conv, at) for conv, (_, _, at) in expected]

    run(body)


# -- recent history -----------------------------------------------------------------------

def _msg(seq: int, body: str = "") -> dict[str, Any]:
    return {"seq": seq, "id": f"m{seq}", "from": "visitor", "body": body or f"hello {seq}",
            "ts": 1700000000.25 + seq, "meta": {"tags": ["vip"], "ünï": None}}


def test_history_is_seq_ordered_and_deduped(run: Runner) -> None:
    async def body(s: Store) -> None:
        assert await s.history("c") == []
        await s.seed_seq("c", 0)
        await s.seed_seq("other", 0)
        for seq in (3, 1, 2, 5):
            await s.history_append("c", _msg(seq))
        await s.history_append("c", _msg(2, "a redelivery must not replace the first"))
        await s.history_append("other", _msg(1))
        assert await s.history("c") == [_msg(1), _msg(2), _msg(3), _msg(5)]
        assert await s.history("other") == [_msg(1)]

    run(body)


def test_history_delete_drops_one_conversation(run: Runner) -> None:
    """A contact's erasure and retention drop the recent history (issue 18)."""
    async def body(s: Store) -> None:
        await s.seed_seq("c", 0)
        await s.seed_seq("other", 0)
        await s.history_append("c", _msg(1))
        await s.history_append("other", _msg(1))
        await s.history_delete("c")
        await s.history_delete("never-had-any")
        assert await s.history("c") == []
        assert await s.history("other") == [_msg(1)]

    run(body)


def test_message_fanout_appends_then_names_each_recipients_nodes(run: Runner) -> None:
    """One call (one round trip on Redis) = history_append + owner + presence_nodes each."""
    async def body(s: Store) -> None:
        now = 100.0
        await s.seed_seq("c", 0)
        # No owner yet, the visitor on two nodes (one entry expired), nobody for a note.
        await s.presence_add("visitor:v1", "k1", "node-a", 30, now)
        await s.presence_add("visitor:v1", "k2", "node-b", 30, now)
        await s.presence_add("visitor:v1", "k3", "node-old", 1, now - 5)
        assert await s.message_fanout("c", _msg(1), "visitor:v1", now) == {
            "visitor:v1": {"node-a", "node-b"}}
        assert await s.message_fanout("c", _msg(2), None, now) == {}
        # Owned by an agent connected on one node; a visitor with no connection.
        await s.agent_update("a1", status="online", pools=("general",), max_chats=3,
                             name="Ann", now=now)
        assert await s.claim("c", "a1", now=now)
        await s.presence_add("agent:a1", "k9", "node-c", 30, now)
        assert await s.message_fanout("c", _msg(3), "visitor:v2", now) == {
            "visitor:v2": set(), "agent:a1": {"node-c"}}
        await s.message_fanout("c", _msg(2, "a redelivery must not replace the first"), None,
                               now)
        assert await s.history("c") == [_msg(1), _msg(2), _msg(3)]

    run(body)


def test_history_is_capped_to_the_newest(run: Runner) -> None:
    async def body(s: Store) -> None:
        total = HISTORY_STREAM_LEN + 37
        await s.seed_seq("c", 0)
        for seq in range(1, total + 1):
            await s.history_append("c", _msg(seq))
        await s.history_append("c", _msg(2))  # older than everything kept: stays out
        hist = await s.history("c")
        assert [m["seq"] for m in hist] == list(range(total - HISTORY_STREAM_LEN + 1, total + 1))
        assert hist[-1] == _msg(total)

    run(body)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=st.lists(st.integers(1, HISTORY_STREAM_LEN + 40), min_size=1,
                     max_size=HISTORY_STREAM_LEN + 60))
def test_history_keeps_the_newest_distinct_seqs(run: Runner, seqs: list[int]) -> None:
    """Property: the stream holds the HISTORY_STREAM_LEN highest distinct seqs ever appended,
    in order, each with the body it was first appended with."""

    async def body(s: Store) -> None:
        first: dict[int, str] = {}
        await s.seed_seq("c", 0)
        for i, seq in enumerate(seqs):
            await s.history_append("c", _msg(seq, f"v{i}"))
            first.setdefault(seq, f"v{i}")
        kept = sorted(first)[-HISTORY_STREAM_LEN:]
        assert await s.history("c") == [_msg(seq, first[seq]) for seq in kept]

    run(body)


# -- Redis only: real TTLs and lost or stale counters --------------------------------------

@pytest.mark.redis
def test_redis_sets_real_ttls() -> None:
    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        r = s._r
        p = s._prefix
        await s.kv_set("sess", "v", ttl_s=30, now=0)
        assert 29_000 < await r.pttl(p + "kv:sess") <= 30_000
        await s.kv_get("sess", now=1, touch_ttl_s=300)
        assert 299_000 < await r.pttl(p + "kv:sess") <= 300_000
        await s.presence_add("agent:1", "c1", "n1", ttl_s=45, now=0)
        await s.presence_add("agent:1", "c2", "n1", ttl_s=20, now=0)  # never shortens
        assert 44_000 < await r.pttl(p + "presence:agent:1") <= 45_000
        await s.seed_seq("c", 0)
        await s.assign_seq("c", "m", now=0)
        await s.history_append("c", _msg(1))
        for key in ("seq:c", "cids:c", "hist:c"):
            assert await r.pttl(p + key) > 3600_000, key

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_lost_counter_is_reseeded_and_never_repeats() -> None:
    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        await s.seed_seq("c", 0)
        for i in range(5):
            await s.assign_seq("c", f"m{i}", now=0)
        await s._r.delete(s._prefix + "seq:c")  # what a Redis restart without persistence does
        assert await s.assign_seq("c", "m9", now=0) is None
        assert await s.last_seq("c") is None
        await s.seed_seq("c", 5)  # the caller's database max
        assert await s.assign_seq("c", "m9", now=0, checked=True) == (6, True)

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_counter_from_another_run_counts_as_unknown() -> None:
    """A Redis restored from an old snapshot brings back a stale counter: it must not be used."""

    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        key = s._prefix + "seq:c"
        await s.seed_seq("c", 0)
        for i in range(5):
            await s.assign_seq("c", f"m{i}", now=0)
        await s._r.hset(key, mapping={"n": 3, "epoch": "0123abcd"})  # snapshot of another run
        assert await s.assign_seq("c", "m9", now=0) is None
        assert await s.last_seq("c") is None
        await s.seed_seq("c", 2)  # database behind the stale counter: the larger one wins
        assert await s.last_seq("c") == 3
        await s.seed_seq("c", 5)
        assert await s.assign_seq("c", "m9", now=0, checked=True) == (6, True)
        assert await s.assign_seq("c", "m1", now=0) == (2, False)  # remembered ids still count

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_stores_sharing_a_prefix_share_state() -> None:
    """Two routers are two clients: claims through both still never over-assign."""

    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        other = RedisStore(REDIS_URL, s._prefix)
        try:
            await _agent(s, "a", max_chats=4)
            results = await asyncio.gather(
                *(st_.claim(f"c{i}", "a", now=0) for i in range(40)
                  for st_ in ((s, other)[i % 2],)))
            assert sum(results) == 4
            agent = await other.agent_get("a")
            assert agent is not None and agent.open_chats == 4
        finally:
            await other.close()

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_unreachable_is_not_ready_and_opens_the_breaker() -> None:
    from tidedesk.errors import StoreUnavailable

    async def main() -> None:
        store = RedisStore("redis://127.0.0.1:9/0", "tidedesk-test:unreachable:", timeout_s=1)
        try:
            with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
                await store.start()
            assert not store.ready
            for _ in range(10):
                with pytest.raises(StoreUnavailable):
                    await store.last_seq("c")
            # Open: fails at once without trying the network.
            assert store.breaker.current_state == "open"
            with pytest.raises(StoreUnavailable, match="circuit open"):
                await store.last_seq("c")
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.redis
def test_redis_pool_exhausted_is_busy_not_down() -> None:
    """Every pooled connection busy past the timeout (a connect surge): the call fails with
    StoreUnavailable, but the store stays ready and the breaker closed, so /readyz keeps this
    node in HAProxy instead of sending its whole load to the others."""
    from tidedesk.errors import StoreUnavailable

    async def main() -> None:
        prefix = f"tidedesk-test-{uuid.uuid4().hex[:8]}:"
        store = RedisStore(REDIS_URL, prefix, max_connections=1, timeout_s=0.3)
        try:
            await store.start()
            pool = store._r.connection_pool
            taken = await pool.get_connection()  # type: ignore[no-untyped-call]  # busy elsewhere
            for _ in range(6):  # more than the breaker's failure limit
                with pytest.raises(StoreUnavailable, match="too busy"):
                    await store.last_seq("c")
            # The same for calls sharing a round trip (issue 17): each is told "too busy".
            shared = await asyncio.gather(*(store.assign_seq(f"c{i}", "m", now=0)
                                            for i in range(6)), return_exceptions=True)
            assert all(isinstance(e, StoreUnavailable) and "too busy" in str(e)
                       for e in shared), shared
            assert store.ready
            assert store.breaker.current_state == "closed"
            await pool.release(taken)
            assert await store.last_seq("c") is None  # and it serves again at once
        finally:
            await store.close()

    asyncio.run(main())


# -- Redis only: the once-per-message calls share round trips (issue 17) ------------------

async def _connections_named(name: str) -> int:
    """How many connections the Redis server has open under client name ``name``."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return sum(1 for c in await r.client_list() if c.get("name") == name)
    finally:
        await r.aclose()


@pytest.mark.redis
def test_redis_calls_of_one_loop_pass_share_one_round_trip() -> None:
    """60 concurrent calls (assign_seq, message_fanout, presence_nodes) go to Redis as one
    write on one connection (the server sees one connection of ours, where one call per
    command would have opened 60), in the order they were made."""

    async def main() -> None:
        prefix = f"tidedesk-test:{uuid.uuid4().hex}:"
        name = f"t17-{uuid.uuid4().hex[:12]}"
        s = RedisStore(f"{REDIS_URL}?client_name={name}", prefix)
        try:
            await s.start()
            for i in range(20):
                await s.seed_seq(f"c{i}", 0)
            await s.presence_add("visitor:v", "conn", "node-1", ttl_s=60, now=0)
            before = s._trips.round_trips
            results = await asyncio.gather(
                *(s.assign_seq(f"c{i % 10}", f"m{i}", now=0) for i in range(20)),
                *(s.message_fanout(f"c{i}", _msg(1), "visitor:v", now=0)
                  for i in range(10, 20)),
                *(s.presence_nodes("visitor:v", now=0) for _ in range(30)))
            assert s._trips.round_trips == before + 1
            assert await _connections_named(name) == 1
            # One conversation's calls ran in the order they were made: m0 then m10.
            assert results[:20] == [(1, True)] * 10 + [(2, True)] * 10
            assert results[20:30] == [{"visitor:v": {"node-1"}}] * 10
            assert results[30:] == [{"node-1"}] * 30
            # Calls made while a round trip is out go in the next one, all together.
            first = asyncio.ensure_future(s.assign_seq("c0", "late-0", now=0))
            await asyncio.sleep(0)  # its round trip is out
            rest = [asyncio.ensure_future(s.assign_seq("c0", f"late-{i}", now=0))
                    for i in range(1, 6)]
            assert [await f for f in (first, *rest)] == [(n, True) for n in range(3, 9)]
            assert s._trips.round_trips == before + 3
        finally:
            await s.close()
            await delete_prefix(prefix)

    asyncio.run(main())


@pytest.mark.redis
def test_redis_a_failing_call_fails_alone_in_its_round_trip() -> None:
    """A command Redis refuses (here a counter key of the wrong type) fails its own caller;
    the calls beside it in the same round trip succeed, and the store stays ready."""
    from redis.exceptions import ResponseError

    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        for conv in ("a", "c"):
            await s.seed_seq(conv, 0)
        await s._r.set(s._prefix + "seq:b", "not a hash")
        before = s._trips.round_trips
        results: list[Any] = await asyncio.gather(
            s.assign_seq("a", "m", now=0), s.assign_seq("b", "m", now=0),
            s.assign_seq("c", "m", now=0), return_exceptions=True)
        a, b, c = results
        assert s._trips.round_trips == before + 1
        assert a == (1, True) and c == (1, True)
        assert isinstance(b, ResponseError) and "WRONGTYPE" in str(b)
        assert s.ready and s.breaker.current_state == "closed"
        # An argument Redis cannot take fails its caller at once, before any round trip.
        with pytest.raises(TypeError, match="cannot send NoneType"):
            s._trips.call(("GET", None))  # type: ignore[arg-type]
        assert await s.assign_seq("a", "m2", now=0) == (2, True)

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_unknown_script_is_loaded_and_run_again() -> None:
    """NOSCRIPT (Redis restarted, or its script cache was flushed): the round trip loads the
    script and runs its commands again; the calls that did not need it keep their reply."""

    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        fresh = s._r.register_script(f"return ARGV[1] .. '-{uuid.uuid4().hex}'")  # not loaded
        await s.seed_seq("a", 0)

        async def run_fresh(arg: str) -> str:
            return str(await s._trips.evalsha(fresh, [], [arg]))

        before = s._trips.round_trips
        one, seq, two = await asyncio.gather(run_fresh("1"), s.assign_seq("a", "m", now=0),
                                             run_fresh("2"))
        assert one.startswith("1-") and two.startswith("2-")
        assert seq == (1, True)
        assert s._trips.round_trips == before + 2  # the trip, then load + run again

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_unreachable_fails_every_call_of_a_round_trip_as_unavailable() -> None:
    from tidedesk.errors import StoreUnavailable

    async def main() -> None:
        store = RedisStore("redis://127.0.0.1:9/0", "tidedesk-test:unreachable:", timeout_s=1)
        try:
            results = await asyncio.gather(
                *(store.assign_seq(f"c{i}", "m", now=0) for i in range(3)),
                store.message_fanout("c", _msg(1), "visitor:v", now=0),
                store.presence_nodes("visitor:v", now=0), return_exceptions=True)
            assert store._trips.round_trips == 1
            for res in results:
                assert isinstance(res, StoreUnavailable), res
                assert "Redis is unavailable" in str(res)
            assert not store.ready
            assert store.breaker.fail_counter == 5  # one failure per call, as before
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.redis
def test_redis_that_never_answers_fails_the_round_trip_within_its_timeout() -> None:
    """A Redis that takes the connection and never answers (a hung server, a half-open link):
    every call of the round trip fails as unavailable once ``timeout_s`` has passed (one
    deadline for all the replies of a round trip, issue 17)."""
    import socket
    import time

    from tidedesk.errors import StoreUnavailable

    async def main() -> None:
        silent = socket.create_server(("127.0.0.1", 0))
        accepted: list[socket.socket] = []
        loop = asyncio.get_running_loop()

        async def take() -> None:
            while True:
                conn, _ = await loop.sock_accept(silent)
                accepted.append(conn)  # held open, never read from or answered

        silent.setblocking(False)
        taker = asyncio.ensure_future(take())
        port = silent.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", "tidedesk-test:silent:", timeout_s=0.4)
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(store.assign_seq(f"c{i}", "m", now=0) for i in range(5)),
                return_exceptions=True)
            took = time.monotonic() - started
            assert store._trips.round_trips == 1
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            assert 0.3 < took < 1.5, f"the round trip failed after {took:.2f} s, not ~0.4"
        finally:
            taker.cancel()
            await store.close()
            for conn in accepted:
                conn.close()
            silent.close()

    asyncio.run(main())


@pytest.mark.redis
def test_redis_a_cancelled_caller_leaves_the_others_their_replies() -> None:
    """A caller cancelled before its round trip left is not sent; one cancelled after is
    run (Redis has it) and its reply dropped; the others get theirs either way."""

    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        for conv in ("a", "b"):
            await s.seed_seq(conv, 0)
        a = asyncio.ensure_future(s.assign_seq("a", "m", now=0))
        b = asyncio.ensure_future(s.assign_seq("b", "m", now=0))
        await asyncio.sleep(0)
        a.cancel()  # before its round trip left: it is never sent
        assert await b == (1, True)
        with pytest.raises(asyncio.CancelledError):
            await a
        assert await s.assign_seq("a", "m", now=0) == (1, True)  # no seq was taken for it
        # Cancelled while its round trip is out: it runs, its caller just does not hear.
        c = asyncio.ensure_future(s.assign_seq("b", "m2", now=0))
        d = asyncio.ensure_future(s.assign_seq("b", "m3", now=0))
        while s._trips._task is None:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the round trip's write is out
        c.cancel()
        assert await d == (3, True)
        assert await s.assign_seq("b", "m2", now=0) == (2, False)

    _runner("redis")(body)


def _in_use(s: RedisStore) -> int:
    """Pool connections taken and not given back (redis-py's pool keeps them in a set)."""
    return len(s._r.connection_pool._in_use_connections)  # type: ignore[attr-defined]


@pytest.mark.redis
def test_redis_round_trips_back_to_back_hold_one_connection_and_give_it_back() -> None:
    """Round trips keep the pool connection they took, back to back (calls queued while one
    was out) and from one draining task to the next; it goes back to the pool once none was
    made for ``hold_idle_s``, when a round trip fails, and when the task is cancelled."""

    async def idle(s: RedisStore) -> None:
        deadline = time.monotonic() + 2
        while _in_use(s) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def body(s: Store) -> None:
        assert isinstance(s, RedisStore)
        s._trips._hold_idle_s = 0.1
        await s.seed_seq("a", 0)
        trips, checkouts = s._trips.round_trips, s._trips.checkouts
        first = asyncio.ensure_future(s.assign_seq("a", "m0", now=0))
        await asyncio.sleep(0)  # its round trip is out
        queued = [asyncio.ensure_future(s.assign_seq("a", f"m{i}", now=0)) for i in (1, 2)]
        await asyncio.sleep(0)
        queued.append(asyncio.ensure_future(s.last_seq("a")))
        assert await asyncio.gather(first, *queued) == [(1, True), (2, True), (3, True), 3]
        assert s._trips.round_trips > trips + 1  # back to back ...
        assert s._trips.checkouts == checkouts + 1  # ... on one connection
        assert s._trips._task is None and _in_use(s) == 1  # kept while recently used
        assert await s.last_seq("a") == 3  # a later task's round trip takes it again
        assert s._trips.checkouts == checkouts + 1
        started = time.monotonic()
        await idle(s)
        assert _in_use(s) == 0, "given back once idle"
        assert time.monotonic() - started >= 0.05
        await s._r.set(s._prefix + "seq:b", "not a hash")
        from redis.exceptions import ResponseError
        with pytest.raises(ResponseError):
            await s.assign_seq("b", "m", now=0)  # a refused command: the connection is fine
        assert _in_use(s) == 1
        await idle(s)
        assert _in_use(s) == 0
        # A round trip that fails gives it back at once (disconnected: replies may be late).
        slow = asyncio.ensure_future(s._trips.call(("BLPOP", s._prefix + "never", 5)))
        await asyncio.sleep(0.05)
        assert _in_use(s) == 1
        task = s._trips._task
        assert task is not None
        task.cancel()  # the store closing while a round trip is out
        with pytest.raises(asyncio.CancelledError):
            await slow
        while s._trips._task is not None or _in_use(s):
            await asyncio.sleep(0.01)
        assert await s.assign_seq("a", "m3", now=0) == (4, True)  # the pool serves again
        await idle(s)
        assert _in_use(s) == 0

    _runner("redis")(body)


@pytest.mark.redis
def test_redis_round_trip_that_times_out_gives_its_connection_back() -> None:
    """A round trip past its deadline fails its callers and disconnects and returns the
    connection it held, so the next round trip takes a fresh one."""

    async def main() -> None:
        prefix = f"tidedesk-test:{uuid.uuid4().hex}:"
        s = RedisStore(REDIS_URL, prefix, timeout_s=0.3)
        try:
            await s.start()
            from redis.exceptions import TimeoutError as RedisTimeoutError
            with pytest.raises(RedisTimeoutError, match=r"0\.3 s"):
                await s._trips.call(("BLPOP", prefix + "never", 2))
            assert s._trips._task is None and _in_use(s) == 0
            await s.seed_seq("a", 0)
            checkouts = s._trips.checkouts
            assert await s.assign_seq("a", "m", now=0) == (1, True)
            assert s._trips.checkouts == checkouts + 1  # a fresh connection
        finally:
            await s.close()
            await delete_prefix(prefix)

    asyncio.run(main())


def test_a_closed_conversation_leaves_nothing_in_the_store(run: Runner) -> None:
    """Issue 17: a desk's store follows its open chats. Closing forgets the client ids, the
    counter and the recent history (in Redis: no key left); a late message then finds no
    counter, as after a store loss, and the caller re-seeds it from the database."""
    async def body(s: Store) -> None:
        await s.seed_seq("c", 0)
        await s.seed_seq("other", 0)
        for i in range(3):
            seq, _ = await s.assign_seq("c", f"m{i}", now=0) or (0, False)
            await s.history_append("c", {"seq": seq, "body": f"m{i}"})
        assert await s.assign_seq("other", "x", now=0) == (1, True)
        await s.history_append("other", {"seq": 1, "body": "x"})
        await s.forget_closed("c")
        assert await s.last_seq("c") is None
        assert await s.history("c") == []
        # A message still in flight when it closed is not kept in a new history key.
        await s.history_append("c", {"seq": 4, "body": "late"})
        assert await s.message_fanout("c", {"seq": 5, "body": "later"}, None, now=0) == {}
        assert await s.history("c") == []
        assert await s.assign_seq("c", "m0", now=0) is None  # unknown: re-seed, then ask the db
        await s.seed_seq("c", 103)
        assert await s.assign_seq("c", "m0", now=0) == CHECK_DATABASE
        # the other conversation keeps all of its memory
        assert await s.last_seq("other") == 1
        assert await s.assign_seq("other", "x", now=0) == (1, False)
        assert [m["seq"] for m in await s.history("other")] == [1]
        await s.forget_closed("other")
        await s.forget_closed("c")
        await s.forget_closed("c")  # closing twice, or an unknown chat: no error
        await s.forget_closed("never-seen")
        if isinstance(s, RedisStore):
            left = [k async for k in s._r.scan_iter(match=s._prefix + "*")]
            assert [k for k in left if str(k)[len(s._prefix):].split(":")[0]
                    in ("seq", "cids", "cidf", "hist")] == []
        else:
            assert isinstance(s, MemoryStore)
            assert not (s._counters or s._history or s._client_ids or s._forgot)

    run(body)


def test_memory_store_does_not_keep_what_expired() -> None:
    """Redis expires keys by itself; the embedded store must not grow by every client id and
    rate-limit window it ever saw (one entry per message and per address-minute otherwise)."""
    async def body() -> None:
        store = MemoryStore()
        await store.seed_seq("c1", 0)
        for i in range(5000):
            now = float(i)  # one write a second; each expires 2 s later
            await store.kv_set(f"rl:ip:10.0.0.{i}", "1", 2, now)
            await store.kv_incr(f"login-failures:{i}", 2, now)
            assert await store.assign_seq("c1", f"m{i}", now, checked=True) is not None
        assert len(store._kv) < 2100
        assert len(store._client_ids["c1"].seqs) == CLIENT_IDS_PER_CONVERSATION
        assert await store.kv_get("rl:ip:10.0.0.4999", 4999.5) == "1"  # the live ones stay
        assert await store.assign_seq("c1", "m4999", 4999) == (5000, False)
        await store.drop_client_ids("c1")
        assert "c1" not in store._client_ids

    asyncio.run(body())

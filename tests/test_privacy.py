"""A contact's data on request (issue 18): export as JSON, and erasure that leaves no trace of a
marker string in SQLite (file bytes, write-ahead log included), MariaDB (every table of every
shard) or Redis (every key of the desk's prefix), while the conversation skeleton stays."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from tests.support import mariadb
from tests.support.clients import (
    Http,
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
)
from tests.support.routing import GENERAL_ONLY
from tests.support.waiting import wait_until_async
from tidedesk.models import shard_index
from tidedesk.redisstore import RedisStore
from tidedesk.runtime import Runtime
from tidedesk.settings import load_settings
from tidedesk.storage.records import as_dicts

REDIS_URL = "redis://127.0.0.1:6379/0"
MARKER = "Zq7marker"


@contextlib.asynccontextmanager
async def desk(tmp_path: Path, kind: str) -> AsyncIterator[tuple[Runtime, Any]]:
    """An embedded server on SQLite, or on two MariaDB shards with the store in Redis."""
    if kind == "sqlite":
        async with embedded(tmp_path, GENERAL_ONLY, admin_require_2fa=False) as rt:
            yield rt, None
        return
    prefix = f"tidedesk-t18:{uuid.uuid4().hex[:8]}:"
    with mariadb.databases(2) as urls:
        settings = load_settings(env={}, data_dir=str(tmp_path / "data"), port=0,
                                 ws_ping_interval_s=0, database_url=",".join(urls),
                                 admin_require_2fa=False,
                                 routing_file=None)
        rt = Runtime(settings, "dev", store=RedisStore(REDIS_URL, prefix))
        await rt.start(port=0)
        try:
            yield rt, (urls, prefix)
        finally:
            await rt.stop(drain=False)
            r = redis.Redis.from_url(REDIS_URL)
            for key in r.scan_iter(f"{prefix}*"):
                r.delete(key)


def traces(rt: Runtime, where: Any) -> list[str]:
    """Every place the marker is found: SQLite file bytes, MariaDB rows, Redis values."""
    found: list[str] = []
    if where is None:
        for path in (p for p in Path(rt.settings.data_dir).rglob("*") if p.is_file()):
            if MARKER.encode() in path.read_bytes():
                found.append(path.name)
        return found
    urls, prefix = where
    for url in urls:
        name = url.rsplit("/", 1)[1]
        conn = pymysql.connect(host=mariadb.HOST, port=mariadb.PORT, user=mariadb.USER,
                               password="", database=name)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW TABLES")
                for (table,) in cur.fetchall():
                    cur.execute(f"SELECT * FROM `{table}`")
                    found += [f"{name}.{table}" for row in cur.fetchall() if MARKER in str(row)]
        finally:
            conn.close()
    # Bytes, not text: some values are binary (the client-id filter ``cidf:<conv>``).
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{prefix}*"):
        kind = r.type(key).decode()
        value = {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1),
                 "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1),
                 "stream": lambda k: r.xrange(k)}.get(kind, lambda k: "")(key)
        if MARKER.encode() in _bytes_of(value):
            found.append(f"redis {key.decode(errors='replace')}")
    return found


def _bytes_of(value: object) -> bytes:
    """Every byte string inside a Redis reply (nested lists, dicts, tuples), joined."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        return b"\0".join(_bytes_of(k) + b"\0" + _bytes_of(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return b"\0".join(_bytes_of(v) for v in value)
    return str(value).encode()


async def a_contact_with_history(rt: Runtime) -> tuple[str, list[str]]:
    """A visitor named after the marker who chatted (stored by the router, in the recent
    history), plus an older conversation on the other shard; returns (visitor id, conv ids)."""
    dee = add_agent(rt, "dee@shop.test", role="admin")
    agent = await agent_socket(rt, "dee@shop.test")
    await wait_agent_online(rt, dee)
    visitor_id, _, visitor = await new_visitor(rt, opening=f"my order number is {MARKER}-1",
                                               name=f"Ann {MARKER}",
                                               email=f"{MARKER.lower()}@example.com")
    conv_id = visitor.of_type("hello")[-1]["conversation_id"]
    await agent.wait_type("message", conversation_id=conv_id)
    await agent.send({"type": "message", "conversation_id": conv_id, "id": "a1",
                      "body": f"thanks {MARKER}, looking"})
    await visitor.wait_type("message", id="a1")
    shards = rt.storage.shards
    other = next(c for c in (uuid.uuid4().hex for _ in range(100))
                 if shard_index(c, len(shards)) != shard_index(conv_id, len(shards))
                 or len(shards) == 1)
    with shards[0].db.connection_context():
        shards[0]["Conversation"].create(id=other, visitor_id=visitor_id, state="closed")
    await rt.storage.messages.insert([{
        "conversation_id": other, "seq": 1, "client_id": "old1", "sender_type": "visitor",
        "sender_id": visitor_id, "sender_name": "", "body": f"earlier {MARKER} question",
        "private": False, "ts": 1.0}])

    async def stored() -> bool:
        return await rt.storage.messages.count(conv_id) >= 2
    await wait_until_async("both messages stored", stored, timeout=10)
    await visitor.close()
    await agent.close()
    return visitor_id, [conv_id, other]


@pytest.mark.parametrize("kind", ["sqlite", "mariadb+redis"])
def test_erasure_leaves_no_trace_and_keeps_the_skeleton(tmp_path: Path, kind: str) -> None:
    async def scenario() -> None:
        async with desk(tmp_path, kind) as (rt, where):
            visitor_id, conv_ids = await a_contact_with_history(rt)
            http = Http(rt)
            token = await login(rt, "dee@shop.test")
            assert traces(rt, where), "the marker should be stored before the erasure"
            status, export = await http.request("GET", f"/api/v1/contacts/{visitor_id}/export",
                                                token=token)
            assert status == 200
            assert export["contact"]["name"] == f"Ann {MARKER}"
            assert export["contact"]["email"] == f"{MARKER.lower()}@example.com"
            bodies = [m["body"] for c in export["conversations"] for m in c["messages"]]
            assert sorted(bodies) == sorted([f"my order number is {MARKER}-1",
                                             f"thanks {MARKER}, looking",
                                             f"earlier {MARKER} question"])
            status, done = await http.request("DELETE", f"/api/v1/contacts/{visitor_id}",
                                              token=token)
            assert status == 200, done
            assert done["conversations"] == 2 and done["steps"]["message_bodies"] == 3
            assert traces(rt, where) == []
            # The skeleton: conversations and message rows (seq, sender, time) stay.
            for conv_id in conv_ids:
                assert await rt.storage.conversations.get(conv_id) is not None
            assert await rt.storage.messages.count(conv_ids[0]) == 2
            [entry] = as_dicts(await rt.storage.audit.entries(action="contact.erased"))
            assert entry["target"] == visitor_id and MARKER not in str(entry)
            # Again: nothing left to erase, still fine; an unknown contact is a 404.
            assert (await http.request("DELETE", f"/api/v1/contacts/{visitor_id}",
                                       token=token))[0] == 200
            assert (await http.request("DELETE", "/api/v1/contacts/abc", token=token))[0] == 404

    asyncio.run(scenario())


def test_only_admins_with_a_second_factor_erase(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "ada@shop.test", role="admin")
            add_agent(rt, "sue@shop.test", role="supervisor")
            http = Http(rt)
            _, v = await http.request("POST", "/api/v1/visitors", {"name": "Ann"})
            path = f"/api/v1/contacts/{v['visitor_id']}"
            sue = await login(rt, "sue@shop.test")
            assert (await http.request("DELETE", path, token=sue))[0] == 403
            assert (await http.request("GET", path + "/export", token=sue))[0] == 200
            status, data = await http.request("DELETE", path, token=await login(
                rt, "ada@shop.test"))
            assert (status, data["error"]["code"]) == (403, "second_factor_required")

    asyncio.run(scenario())

"""The cluster implementation of the store seam, on Redis through redis-py's asyncio client.

Every multi-step change is one Lua script (registered once per store, run with EVALSHA), so it is
atomic across any number of chat nodes and routers. Reads that need a consistent picture of
several keys are scripts too; single-key reads are plain commands.

Keys (all under ``prefix``, default ``tidedesk:``):

==============================  =========  ====================================================
key                             type       real TTL
==============================  =========  ====================================================
``seq:<conv>``                  hash       ``SEQ_IDLE_TTL_SECS`` sliding (fields ``n``, ``epoch``)
``cid:<len>:<conv>:<client>``   string     ``CLIENT_ID_TTL_SECS`` (``"<seq>:<expires_at>"``)
``kv:<key>``                    hash       the caller's TTL, sliding on touch (``v``, ``exp``)
``presence:<who>``              hash       longest connection TTL (conn -> ``"<exp>|<node>"``)
``agent:<id>``                  hash       none (status, pools, max_chats, open_chats, ...)
``pool:<pool>``                 set        none (agent ids)
``agentconvs:<id>``             set        none (conversations the agent owns)
``owner:<conv>``                string     none (agent id)
``queue:<pool>:vip|std``        zset       none (conv -> arrival counter)
``queue:<pool>:at``             hash       none (conv -> enqueued_at)
``queue:<pool>:n``              string     none (arrival counter)
``hist:<conv>``                 zset       ``HISTORY_IDLE_TTL_SECS`` sliding (score = seq)
==============================  =========  ====================================================

Expiry: the interface hands in ``now``; logical expiry (kv, presence, remembered client ids)
compares against it, exactly as :class:`~tidedesk.store.MemoryStore` does. Real Redis TTLs are
set as well, so that nothing piles up when callers go away; they never cut a logical lifetime
short as long as callers pass ``time.time()``.

Sequence counters and restarts: a counter that is missing makes :meth:`RedisStore.assign_seq`
return ``None`` and the caller re-seeds it from the database. A Redis that restarts *with*
persistence (RDB or AOF) would bring back a counter older than the last seq handed out, and
reusing it would repeat seqs. So each counter carries the ``run_id`` of the Redis process that
seeded it (its *epoch*); a counter from another run_id (a restart, or a failover to a replica)
counts as unknown. :meth:`seed_seq` keeps the larger of the stale value and the floor.

Redis errors (``redis.exceptions.ConnectionError`` / ``TimeoutError``) reach the caller as
:class:`~tidedesk.errors.StoreUnavailable`, behind a circuit breaker (pybreaker: after
``BREAKER_FAIL_MAX`` failures in a row calls fail at once for ``BREAKER_RESET_SECS``); ``ready`` is
False after such an error until a call succeeds again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar, cast

import pybreaker
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from tidedesk.errors import StoreUnavailable
from tidedesk.store import CLIENT_ID_TTL_SECS, HISTORY_STREAM_LEN, AgentLoad, Store

# A counter nobody used for a week expires; the next message re-seeds it from the database.
SEQ_IDLE_TTL_SECS = 7 * 24 * 3600
# Recent history of a quiet conversation expires; resume then falls back to the database.
HISTORY_IDLE_TTL_SECS = 7 * 24 * 3600

P = ParamSpec("P")
T = TypeVar("T")

# The Redis process's identity; it changes on every restart and on failover.
_RUN_ID_LUA = "local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')\n"

# KEYS: counter, client id. ARGV: now, expires_at (string), client id ttl ms, counter ttl ms.
_ASSIGN_SEQ = _RUN_ID_LUA + """
local known = redis.call('GET', KEYS[2])
if known then
  local sep = string.find(known, ':', 1, true)
  if tonumber(string.sub(known, sep + 1)) > tonumber(ARGV[1]) then
    return {tonumber(string.sub(known, 1, sep - 1)), 0}
  end
end
if redis.call('HGET', KEYS[1], 'epoch') ~= run_id then
  return false
end
local seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], seq .. ':' .. ARGV[2], 'PX', ARGV[3])
return {seq, 1}
"""

# KEYS: counter. ARGV: floor, counter ttl ms. Keeps the largest value ever seen, even a stale one.
_SEED_SEQ = _RUN_ID_LUA + """
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local floor = tonumber(ARGV[1])
if floor > n then n = floor end
redis.call('HSET', KEYS[1], 'n', string.format('%d', n), 'epoch', run_id)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""

# KEYS: counter.
_LAST_SEQ = _RUN_ID_LUA + """
local c = redis.call('HMGET', KEYS[1], 'n', 'epoch')
if c[2] ~= run_id then return false end
return tonumber(c[1])
"""

# KEYS: kv. ARGV: value, expires_at, ttl ms.
_KV_SET = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
"""

# KEYS: kv. ARGV: now, touch ('' or new expires_at), touch ttl ms.
_KV_GET = """
local item = redis.call('HMGET', KEYS[1], 'v', 'exp')
if not item[1] then return false end
if tonumber(item[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'exp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return item[1]
"""

# KEYS: kv. ARGV: now, expires_at if new, ttl ms if new. A fixed window: expiry set once.
_KV_INCR = """
local item = redis.call('HMGET', KEYS[1], 'v', 'exp')
if not item[1] or tonumber(item[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'v', '1', 'exp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return redis.call('HINCRBY', KEYS[1], 'v', 1)
"""

# KEYS: kv. ARGV: now, expected ('' = missing), has_expected ('1'/'0'), value, expires_at, ttl ms.
_KV_SWAP = """
local item = redis.call('HMGET', KEYS[1], 'v', 'exp')
local live = item[1] and tonumber(item[2]) > tonumber(ARGV[1])
if ARGV[3] == '1' then
  if not live or item[1] ~= ARGV[2] then return 0 end
elseif live then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'exp', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""

# KEYS: presence. ARGV: conn, "<exp>|<node>", now, ttl ms. Drops expired connections on the way.
_PRESENCE_ADD = """
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[3])
for i = 1, #all, 2 do
  local sep = string.find(all[i + 1], '|', 1, true)
  if tonumber(string.sub(all[i + 1], 1, sep - 1)) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
"""

# KEYS: presence. ARGV: conn.
_PRESENCE_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('HLEN', KEYS[1])
"""

# KEYS: owner, agent, agent's conversations. ARGV: agent id, now, conv id.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local a = redis.call('HMGET', KEYS[2], 'status', 'open_chats', 'max_chats')
if not a[1] or a[1] ~= 'online' then return 0 end
if tonumber(a[2]) >= tonumber(a[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'open_chats', 1)
redis.call('HSET', KEYS[2], 'last_assigned_at', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# KEYS: owner, agent, agent's conversations. ARGV: expected owner, conv id.
# Compare-and-delete: the caller read the owner to know which agent keys to name.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
local n = tonumber(redis.call('HGET', KEYS[2], 'open_chats') or '0')
if n > 0 then redis.call('HINCRBY', KEYS[2], 'open_chats', -1) end
return 1
"""

# KEYS: vip zset, std zset, enqueued_at hash, counter. ARGV: conv, vip ('1'/'0'), now.
_ENQUEUE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
local n = redis.call('INCR', KEYS[4])
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], n, ARGV[1])
else
  redis.call('ZADD', KEYS[2], n, ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

# KEYS: vip zset, std zset, enqueued_at hash. ARGV: conv.
_DEQUEUE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return removed
"""

# KEYS: vip zset, std zset, enqueued_at hash. Returns conv, enqueued_at, conv, ...
_WAITING = """
local out = {}
for k = 1, 2 do
  for _, conv in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
    out[#out + 1] = conv
    out[#out + 1] = redis.call('HGET', KEYS[3], conv) or '0'
  end
end
return out
"""

# KEYS: history zset. ARGV: seq, message JSON, cap, ttl ms.
# KEYS: history zset, owner, the visitor's presence hash. ARGV: seq, message JSON, cap, ttl ms,
# '1' when the visitor is a recipient, the key prefix of agents' presence hashes. Returns
# {owner or '', the visitor's presence entries, the owner's presence entries}. The owner's key
# is made here from the owner read here: one Redis server (or Sentinel primary), not a cluster.
_MESSAGE_FANOUT = """
if #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local owner = redis.call('GET', KEYS[2])
local visitor = {}
if ARGV[5] == '1' then visitor = redis.call('HVALS', KEYS[3]) end
local agent = {}
if owner then agent = redis.call('HVALS', ARGV[6] .. owner) end
return {owner or '', visitor, agent}
"""

_HISTORY_APPEND = """
if #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1) > 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


# Circuit breaker: this many connection failures in a row open it for this long.
BREAKER_FAIL_MAX = 5
BREAKER_RESET_SECS = 5.0


def _ms(seconds: float) -> int:
    """A Redis TTL in milliseconds; at least 1 (0 or less would be an error or a delete)."""
    return max(1, math.ceil(seconds * 1000))


def _live_nodes(entries: Iterable[str], now: float) -> set[str]:
    """The nodes of presence entries (``expires|node``) that have not expired."""
    nodes = set()
    for entry in entries:
        expires, _, node = entry.partition("|")
        if float(expires) > now:
            nodes.add(node)
    return nodes


def _pool_exhausted(exc: BaseException) -> bool:
    """Every pooled connection stayed busy for ``timeout_s`` (redis-py raises a ConnectionError
    from a TimeoutError): this process is overloaded, Redis itself is fine."""
    return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, TimeoutError)


def _tracked(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Keep ``ready`` up to date: False after a connection error, True after a success."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        self = args[0]
        assert isinstance(self, RedisStore)
        try:
            with self.breaker.calling():
                result = await fn(*args, **kwargs)
        except pybreaker.CircuitBreakerError:
            self._ready = False
            raise StoreUnavailable("Redis is unavailable (circuit open); retry shortly") from None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if _pool_exhausted(exc):
                # The call fails (the client retries, as for any Unavailable), but readiness
                # and the breaker stay: else a connect surge would take this node out of
                # HAProxy and send the whole surge to the others.
                raise StoreUnavailable("too busy: no Redis connection free in time; retry "
                                       "shortly") from exc
            self._ready = False
            # Idle pooled connections may be dead too (Redis restarted): drop them, so the
            # calls after Redis is back use fresh ones instead of failing one by one and
            # opening the breaker again.
            with contextlib.suppress(Exception):
                await self._r.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        self._ready = True
        return result

    return wrapper


class RedisStore(Store):
    """:class:`~tidedesk.store.Store` on one Redis server (or a Sentinel-managed primary).

    ``url`` is a ``redis://`` URL; ``prefix`` is put in front of every key, so several
    deployments (or test runs) can share a server. At most ``max_connections`` commands are in
    flight at once; ``timeout_s`` bounds waiting for a connection and for an answer.
    """

    def __init__(self, url: str, prefix: str = "tidedesk:", *, max_connections: int = 64,
                 timeout_s: float = 5.0) -> None:
        self._prefix = prefix
        # A blocking pool: under a burst, callers wait up to ``timeout_s`` for a connection
        # instead of failing at once with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=max_connections, timeout=timeout_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        )
        self._r: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._ready = True
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=BREAKER_FAIL_MAX, reset_timeout=BREAKER_RESET_SECS, name="redis",
            exclude=[lambda exc: not isinstance(exc, RedisConnectionError | RedisTimeoutError)
                     or _pool_exhausted(exc)])
        reg = self._r.register_script
        self._assign_seq = reg(_ASSIGN_SEQ)
        self._seed_seq = reg(_SEED_SEQ)
        self._last_seq = reg(_LAST_SEQ)
        self._kv_set = reg(_KV_SET)
        self._kv_get = reg(_KV_GET)
        self._kv_incr = reg(_KV_INCR)
        self._kv_swap = reg(_KV_SWAP)
        self._presence_add = reg(_PRESENCE_ADD)
        self._presence_remove = reg(_PRESENCE_REMOVE)
        self._claim = reg(_CLAIM)
        self._release = reg(_RELEASE)
        self._enqueue = reg(_ENQUEUE)
        self._dequeue = reg(_DEQUEUE)
        self._waiting = reg(_WAITING)
        self._history_append = reg(_HISTORY_APPEND)
        self._message_fanout = reg(_MESSAGE_FANOUT)

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _queue_keys(self, pool: str) -> list[str]:
        return [self._k("queue", pool, "vip"), self._k("queue", pool, "std"),
                self._k("queue", pool, "at"), self._k("queue", pool, "n")]

    @_tracked
    async def start(self) -> None:
        await self._r.ping()

    async def close(self) -> None:
        await self._r.aclose()
        await self._r.connection_pool.disconnect()

    @property
    def ready(self) -> bool:
        return self._ready

    # -- sequence numbers and idempotency --------------------------------------------------
    @_tracked
    async def assign_seq(self, conv_id: str, client_id: str, now: float) -> tuple[int, bool] | None:
        res = await self._assign_seq(
            keys=[self._k("seq", conv_id),
                  # the length keeps ("a:b", "c") and ("a", "b:c") apart
                  self._k("cid", str(len(conv_id)), conv_id, client_id)],
            args=[repr(now), repr(now + CLIENT_ID_TTL_SECS), _ms(CLIENT_ID_TTL_SECS),
                  _ms(SEQ_IDLE_TTL_SECS)],
        )
        if res is None:
            return None
        return int(res[0]), bool(res[1])

    @_tracked
    async def seed_seq(self, conv_id: str, floor: int) -> None:
        await self._seed_seq(keys=[self._k("seq", conv_id)],
                             args=[int(floor), _ms(SEQ_IDLE_TTL_SECS)])

    @_tracked
    async def last_seq(self, conv_id: str) -> int | None:
        res = await self._last_seq(keys=[self._k("seq", conv_id)])
        return None if res is None else int(res)

    # -- expiring keys (sessions) -----------------------------------------------------------
    @_tracked
    async def kv_set(self, key: str, value: str, ttl_s: float, now: float) -> None:
        await self._kv_set(keys=[self._k("kv", key)], args=[value, repr(now + ttl_s), _ms(ttl_s)])

    @_tracked
    async def kv_get(self, key: str, now: float, touch_ttl_s: float | None = None) -> str | None:
        touch = "" if touch_ttl_s is None else repr(now + touch_ttl_s)
        res = await self._kv_get(
            keys=[self._k("kv", key)],
            args=[repr(now), touch, _ms(touch_ttl_s or 0)],
        )
        return None if res is None else str(res)

    @_tracked
    async def kv_delete(self, key: str) -> None:
        await self._r.delete(self._k("kv", key))

    @_tracked
    async def kv_incr(self, key: str, ttl_s: float, now: float) -> int:
        return int(await self._kv_incr(keys=[self._k("kv", key)],
                                       args=[repr(now), repr(now + ttl_s), _ms(ttl_s)]))

    @_tracked
    async def kv_swap(self, key: str, expected: str | None, value: str, ttl_s: float,
                      now: float) -> bool:
        res = await self._kv_swap(
            keys=[self._k("kv", key)],
            args=[repr(now), expected or "", "0" if expected is None else "1", value,
                  repr(now + ttl_s), _ms(ttl_s)])
        return bool(int(res))

    # -- presence ---------------------------------------------------------------------------
    @_tracked
    async def presence_add(self, who: str, conn: str, node_id: str, ttl_s: float,
                           now: float) -> None:
        await self._presence_add(
            keys=[self._k("presence", who)],
            args=[conn, f"{now + ttl_s!r}|{node_id}", repr(now), _ms(ttl_s)],
        )

    @_tracked
    async def presence_remove(self, who: str, conn: str) -> int:
        return int(await self._presence_remove(keys=[self._k("presence", who)], args=[conn]))

    @_tracked
    async def presence_nodes(self, who: str, now: float) -> set[str]:
        conns = cast(dict[str, str], await self._r.hgetall(self._k("presence", who)))
        return _live_nodes(conns.values(), now)

    # -- agents and ownership ---------------------------------------------------------------
    @_tracked
    async def agent_update(self, agent_id: str, *, status: str, pools: tuple[str, ...],
                           max_chats: int, name: str, now: float) -> None:
        # Optimistic transaction rather than Lua: the old pools name keys the script would
        # otherwise have to build itself. Claims touching the agent make it retry.
        key = self._k("agent", agent_id)
        async with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    old_pools_json, last = await pipe.hmget(key, ["pools", "last_assigned_at"])
                    old_pools = json.loads(old_pools_json) if old_pools_json else []
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for pool in set(old_pools) - set(pools):
                        pipe.srem(self._k("pool", pool), agent_id)
                    for pool in pools:
                        pipe.sadd(self._k("pool", pool), agent_id)
                    pipe.hset(key, mapping={
                        "status": status, "pools": json.dumps(list(pools)),
                        "max_chats": int(max_chats), "name": name,
                        "last_assigned_at": last if last is not None else repr(now),
                    })
                    pipe.hsetnx(key, "open_chats", 0)
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    @staticmethod
    def _agent(agent_id: str, h: dict[str, str]) -> AgentLoad | None:
        if not h or "status" not in h:
            return None
        return AgentLoad(
            agent_id=agent_id, status=h["status"], open_chats=int(h.get("open_chats", 0)),
            max_chats=int(h["max_chats"]), last_assigned_at=float(h["last_assigned_at"]),
            pools=tuple(json.loads(h["pools"])), name=h.get("name", ""),
        )

    @_tracked
    async def agent_get(self, agent_id: str) -> AgentLoad | None:
        h = cast(dict[str, str], await self._r.hgetall(self._k("agent", agent_id)))
        return self._agent(agent_id, h)

    @_tracked
    async def agents_in_pool(self, pool: str) -> list[AgentLoad]:
        ids = sorted(cast(set[str], await self._r.smembers(self._k("pool", pool))))
        async with self._r.pipeline(transaction=False) as pipe:
            for agent_id in ids:
                pipe.hgetall(self._k("agent", agent_id))
            rows = await pipe.execute()
        agents = (self._agent(agent_id, h) for agent_id, h in zip(ids, rows, strict=True))
        return [a for a in agents if a is not None]

    @_tracked
    async def claim(self, conv_id: str, agent_id: str, now: float) -> bool:
        res = await self._claim(
            keys=[self._k("owner", conv_id), self._k("agent", agent_id),
                  self._k("agentconvs", agent_id)],
            args=[agent_id, repr(now), conv_id],
        )
        return bool(res)

    @_tracked
    async def release(self, conv_id: str) -> str | None:
        owner_key = self._k("owner", conv_id)
        while True:
            agent_id = cast(str | None, await self._r.get(owner_key))
            if agent_id is None:
                return None
            done = await self._release(
                keys=[owner_key, self._k("agent", agent_id), self._k("agentconvs", agent_id)],
                args=[agent_id, conv_id],
            )
            if done:
                return str(agent_id)
            # Someone released (and maybe re-claimed) it between the read and the script.

    @_tracked
    async def owner(self, conv_id: str) -> str | None:
        res = await self._r.get(self._k("owner", conv_id))
        return None if res is None else str(res)

    @_tracked
    async def agent_conversations(self, agent_id: str) -> list[str]:
        members = await self._r.smembers(self._k("agentconvs", agent_id))
        return sorted(cast(set[str], members))

    # -- waiting queues ---------------------------------------------------------------------
    @_tracked
    async def enqueue(self, pool: str, conv_id: str, vip: bool, now: float) -> None:
        await self._enqueue(keys=self._queue_keys(pool),
                            args=[conv_id, "1" if vip else "0", repr(now)])

    @_tracked
    async def dequeue(self, pool: str, conv_id: str) -> bool:
        return bool(await self._dequeue(keys=self._queue_keys(pool)[:3], args=[conv_id]))

    @_tracked
    async def waiting(self, pool: str) -> list[tuple[str, float]]:
        flat = await self._waiting(keys=self._queue_keys(pool)[:3])
        return [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    # -- recent history ---------------------------------------------------------------------
    @_tracked
    async def history_append(self, conv_id: str, message: dict[str, Any]) -> None:
        await self._history_append(
            keys=[self._k("hist", conv_id)],
            args=[int(message["seq"]), json.dumps(message, separators=(",", ":"), sort_keys=True),
                  HISTORY_STREAM_LEN, _ms(HISTORY_IDLE_TTL_SECS)],
        )

    @_tracked
    async def message_fanout(self, conv_id: str, message: dict[str, Any], visitor: str | None,
                             now: float) -> dict[str, set[str]]:
        owner, visitor_entries, agent_entries = await self._message_fanout(
            keys=[self._k("hist", conv_id), self._k("owner", conv_id),
                  self._k("presence", visitor or "-")],
            args=[int(message["seq"]), json.dumps(message, separators=(",", ":"), sort_keys=True),
                  HISTORY_STREAM_LEN, _ms(HISTORY_IDLE_TTL_SECS), "1" if visitor else "0",
                  self._k("presence", "agent:")],
        )
        nodes = {}
        if visitor:
            nodes[visitor] = _live_nodes(visitor_entries, now)
        if owner:
            nodes[f"agent:{owner}"] = _live_nodes(agent_entries, now)
        return nodes

    @_tracked
    async def history(self, conv_id: str) -> list[dict[str, Any]]:
        rows = cast(list[str], await self._r.zrange(self._k("hist", conv_id), 0, -1))
        return [json.loads(row) for row in rows]

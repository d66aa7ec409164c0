"""The cluster implementation of the store seam, on Redis through redis-py's asyncio client.

Every multi-step change is one Lua script (registered once per store, run with EVALSHA), so it is
atomic across any number of chat nodes and routers. Reads that need a consistent picture of
several keys are scripts too; single-key reads are plain commands. The scripts are the files in
``tidedesk/lua/``, one per operation, each naming its KEYS and ARGV in its first lines.

The calls made once per message (``assign_seq`` on the chat node, ``message_fanout`` on the
router, ``presence_nodes`` when delivering) and once per connect (the connect cache's read
with presence, ``any_agent_in``, ``last_seq``, the queue, owner and agent reads, the
``kv_*`` calls of rate limits and tickets, ``presence_leave`` at the close) share round trips:
:class:`RoundTrips` sends the ones issued in one event-loop pass (or while the previous round
trip is out) as one write of raw ``EVALSHA`` commands and reads their replies in order; each
caller still gets its own reply, error, breaker accounting and readiness update (issue 17,
``docs/bench.md``).

Keys (all under ``prefix``, default ``tidedesk:``):

==============================  =========  ====================================================
key                             type       real TTL
==============================  =========  ====================================================
``seq:<conv>``                  hash       ``SEQ_IDLE_TTL_SECS`` sliding (``n``, ``epoch``, ``at``,
                                           ``forgot``: the last write, and whether ``cids`` may
                                           lack an id the conversation has)
``cids:<conv>``                 zset       ``CLIENT_ID_TTL_SECS`` sliding (client id -> seq, the
                                           newest ``CLIENT_IDS_PER_CONVERSATION``; dropped on
                                           close)
``cidf:<conv>``                 string     as ``cids`` (a Bloom filter of every client id
                                           since seq 0, ``CLIENT_ID_FILTER_BITS`` bits; only
                                           while it is complete)
``kv:<key>``                    hash       the caller's TTL, sliding on touch (``v``, ``exp``)
``presence:<who>``              hash       longest connection TTL (conn -> ``"<exp>|<node>"``)
``agent:<id>``                  hash       none (status, pools, max_chats, open_chats,
                                           updated_at, lapsed_from, ...)
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

import asyncio
import contextlib
import functools
import json
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from importlib import resources
from typing import Any, ParamSpec, TypeVar, cast

import msgspec
import pybreaker
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidedesk.errors import StoreUnavailable
from tidedesk.store import (
    CHECK_DATABASE,
    CLIENT_ID_FILTER_BITS,
    CLIENT_ID_TTL_SECS,
    CLIENT_IDS_PER_CONVERSATION,
    HISTORY_STREAM_LEN,
    AgentLoad,
    Store,
)

# A counter nobody used for a week expires; the next message re-seeds it from the database.
SEQ_IDLE_TTL_SECS = 7 * 24 * 3600
# Recent history of a quiet conversation expires; resume then falls back to the database.
HISTORY_IDLE_TTL_SECS = 7 * 24 * 3600

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Circuit breaker: this many connection failures in a row open it for this long.
BREAKER_FAIL_MAX = 5
BREAKER_RESET_SECS = 5.0


@functools.cache
def lua_script(name: str) -> str:
    """The text of ``tidedesk/lua/<name>.lua`` (package data); each file is read once per process,
    when the first store is built."""
    return resources.files("tidedesk").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


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


def _hash(reply: Any) -> dict[str, str]:
    """An HGETALL reply read off the connection (RoundTrips has no redis-py callbacks): a flat
    field, value list in RESP2, a map in RESP3."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


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
        breaker = self.breaker
        try:
            if breaker.current_state == pybreaker.STATE_CLOSED and breaker.fail_counter == 0:
                # Closed, no failure counted: what pybreaker would book for a success (a
                # counter reset to the 0 it is) changes nothing, so the call skips its
                # generator-based manager and lock (3.5 us a call, issue 17); a failure is
                # booked through it as before.
                try:
                    result = await fn(*args, **kwargs)
                except BaseException:
                    with breaker.calling():
                        raise
            else:
                with breaker.calling():
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


Command = Sequence[str | int | float | bytes | memoryview]


def _history_entry(message: dict[str, Any]) -> bytes:
    """A message as the recent history keeps it: compact JSON, keys sorted (what
    ``json.dumps(..., separators=(",", ":"), sort_keys=True)`` wrote, but UTF-8 rather than
    ``\\u`` escapes, in a ninth of its time: it was 1.6% of the router's in P7). Entries are
    told apart by their seq, never by their bytes."""
    return msgspec.json.encode(message, order="sorted")


def _pack(command: Command) -> bytes:
    """A command in RESP, as redis-py's encoder writes it (str as UTF-8, int and float by
    ``repr``), in a fraction of its time: its ``pack_command`` was a fifth of a round trip's
    CPU at 50 commands per trip. Exact bytes, str and int (nearly every argument) are told by
    ``type(arg) is``, ahead of the ``isinstance`` checks subclasses and floats need."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if type(arg) is str:
            data = arg.encode()
        elif type(arg) is bytes:
            data = arg
        elif type(arg) is int:
            data = b"%d" % arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes | memoryview):
            data = bytes(arg)
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _for_each_caller(exc: BaseException) -> BaseException:
    """A copy of a round trip's error for one of its callers (same type, message and cause,
    which :func:`_pool_exhausted` reads), so that callers raising it do not share one
    traceback; the error itself when its type cannot be rebuilt from its arguments."""
    try:
        twin = type(exc)(*exc.args)
    except Exception:  # any constructor that does not take its own arguments
        return exc
    twin.__cause__ = exc.__cause__
    return twin


class _Call:
    __slots__ = ("command", "future", "script")

    def __init__(self, command: bytes, script: AsyncScript | None,
                 future: asyncio.Future[Any]) -> None:
        self.command = command  # packed
        self.script = script  # loaded and the command run again on NOSCRIPT
        self.future = future


async def _write(conn: Any, data: bytes) -> None:
    """``data`` onto a pooled connection, as redis-py's ``send_packed_command`` writes it but
    without its own timeout (the caller's deadline covers the write): straight to the stream
    of a connection that is up, else through redis-py, which connects first."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected:
        await conn.send_packed_command(data, check_health=False)
        return
    try:
        writer.write(data)
        await writer.drain()  # waits only while the socket's send buffer is full
    except OSError as exc:
        # (not chained: a cause that is a TimeoutError reads as an exhausted pool)
        raise RedisConnectionError(f"Error writing to Redis: {exc!r}") from None


# How long RoundTrips keeps its pool connection after its last round trip.
HOLD_IDLE_SECS = 1.0


class RoundTrips:
    """Coalesces the commands that many callers issue at about the same time into one round
    trip to Redis: one write of all of them on one pooled connection, then their replies in
    order (issue 17: redis-py's per-command overhead, a pool checkout, a timeout, a socket
    write and a read each, was 13-20% of the chat node's and router's samples at one
    ``assign_seq`` / ``message_fanout`` per message).

    The first command queued starts a round trip on the next event-loop pass, so every command
    issued in this pass goes with it; commands queued while a round trip is out go in the next
    one, sent the moment it ends (one round trip out at a time: a busy process batches by
    itself, and no command ever waits on a timer), on the same pooled connection: it goes
    back to the pool once no round trip was made for ``hold_idle_s``, when a round trip
    fails, or when the task is cancelled.
    Commands run in the order they were queued (Redis runs a connection's commands in order).
    Each caller gets its own reply or error: a command Redis refuses (a script error) fails
    that caller alone; a lost connection, a timeout or a full pool fails every command of
    that round trip with the error a single command would have raised. A script Redis does
    not know (NOSCRIPT: it restarted, or its script cache was flushed) is loaded and its
    commands run again in the same way.
    """

    def __init__(self, pool: aioredis.ConnectionPool, timeout_s: float,
                 hold_idle_s: float = HOLD_IDLE_SECS) -> None:
        self._pool = pool
        self._timeout_s = timeout_s  # for all the replies of a round trip
        self._queue: list[_Call] = []
        self._task: asyncio.Task[None] | None = None
        # The pooled connection the round trips use, kept until none was made for
        # hold_idle_s: redis-py 8's check-out and release (a lock, a condition, a liveness
        # peek, its observability hooks) cost ~35 us of CPU, a third of a lone round trip's.
        self._held: Any = None
        self._hold_idle_s = hold_idle_s
        self._last_trip = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # how many this process made (tests read it)
        self.checkouts = 0  # pool connections taken for them (tests read it)

    def call(self, command: Command, script: AsyncScript | None = None) -> asyncio.Future[Any]:
        """Queue ``command`` (``EVALSHA`` of ``script``'s sha, or a plain command); the future
        has Redis's (decoded) reply, or raises its error. An argument Redis cannot take
        raises TypeError here, to this caller alone."""
        packed = _pack(command)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Call(packed, script, future))
        if self._task is None:
            # A task's first step runs on the next pass: the rest of this pass queues first.
            self._task = loop.create_task(self._drain())
        return future

    def evalsha(self, script: AsyncScript, keys: Sequence[str],
                args: Sequence[str | int | float | bytes] = ()) -> asyncio.Future[Any]:
        return self.call(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def wait_idle(self) -> None:
        """Until the round trips out and queued are done, and the connection is given back
        (before closing the pool)."""
        while self._task is not None:
            await asyncio.wait([self._task])
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._give_back()
        while self._releases:
            await asyncio.wait(self._releases)

    async def _drain(self) -> None:
        try:
            while self._queue:
                calls, self._queue = self._queue, []
                try:
                    await self._send(calls)
                except Exception as exc:
                    # A bug here must neither leave a caller waiting for ever nor take the
                    # calls queued behind this round trip down with it.
                    log.exception("Redis round trip failed", extra={"calls": len(calls)})
                    for call in calls:
                        if not call.future.done():
                            call.future.set_exception(_for_each_caller(exc))
        except asyncio.CancelledError:
            for call in self._queue:  # the store is closing, or the loop is ending
                call.future.cancel()
            self._queue = []
            self._give_back()
            raise
        finally:
            self._task = None
        if self._held is not None and self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(
                self._hold_idle_s, self._give_back_if_idle)

    def _give_back_if_idle(self) -> None:
        """The idle timer: the connection goes back once no round trip was made for
        ``hold_idle_s`` (one timer per idle spell, not one per round trip)."""
        self._idle_timer = None
        if self._held is None:
            return
        loop = asyncio.get_running_loop()
        left = self._last_trip + self._hold_idle_s - loop.time()
        if self._task is not None or left > 0:
            self._idle_timer = loop.call_later(max(left, 0.0) or self._hold_idle_s,
                                               self._give_back_if_idle)
            return
        self._give_back()

    def _give_back(self) -> None:
        """Return the held connection to the pool. It is not held from here on, so no round
        trip can take it while the release (a coroutine of redis-py's) runs."""
        conn, self._held = self._held, None
        if conn is not None:
            task = asyncio.get_running_loop().create_task(self._pool.release(conn))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _send(self, calls: list[_Call]) -> None:
        # A caller cancelled before its round trip left never reaches Redis (no seq taken).
        calls = [c for c in calls if not c.future.done()]
        if not calls:
            return
        replies = await self._answer(calls, [c.command for c in calls], final=False)
        if replies is None:
            return  # every caller has the round trip's error
        again = [c for c, reply in zip(calls, replies, strict=True)
                 if isinstance(reply, NoScriptError)]
        if again:
            scripts = {id(s): s for c in again if (s := c.script) is not None}
            loads = [_pack(("SCRIPT", "LOAD", s.script)) for s in scripts.values()]
            await self._answer(again, [*loads, *(c.command for c in again)], skip=len(loads),
                               final=True)

    async def _answer(self, calls: list[_Call], commands: list[bytes], *, skip: int = 0,
                      final: bool) -> list[Any] | None:
        """One round trip of ``commands``; the replies after the first ``skip`` answer
        ``calls`` in order (NOSCRIPT only when ``final``: else the caller runs it again).
        Returns those replies; None when the round trip failed (its error is every caller's)."""
        try:
            replies = (await self._round_trip(commands))[skip:]
        except asyncio.CancelledError:
            for call in calls:
                call.future.cancel()
            raise
        except Exception as exc:  # every caller of this round trip gets its error
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(_for_each_caller(exc))
            return None
        for call, reply in zip(calls, replies, strict=True):
            if call.future.done() or (isinstance(reply, NoScriptError) and not final):
                continue  # its caller was cancelled, or it runs again after the load
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)
        return replies

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        self.round_trips += 1
        self._last_trip = asyncio.get_running_loop().time()
        conn = self._held
        if conn is None:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            self.checkouts += 1
            self._held = conn
        try:
            replies: list[Any] = []
            # One deadline for the write and all the replies, not redis-py's timeouts around
            # each: a timer set and cancelled per reply (4% of the router's interpreter time
            # in P7), and a wait_for around the write, which on Python 3.11 runs the write in
            # a task of its own, a loop pass later (issue 17).
            try:
                async with asyncio.timeout(self._timeout_s):
                    await _write(conn, b"".join(commands))
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response(timeout=math.inf))
                        except ResponseError as exc:
                            replies.append(exc)
            except TimeoutError:
                raise RedisTimeoutError(f"No answer from Redis to {len(commands)} commands "
                                        f"within {self._timeout_s:g} s") from None
            return replies
        except BaseException:
            # Replies may still be on the way: this connection can never be reused.
            self._held = None
            try:
                await conn.disconnect(nowait=True)
            finally:
                await self._pool.release(conn)
            raise


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
        # The once-per-message calls (assign_seq, message_fanout, presence_nodes) and a
        # connect's (the cache read and presence, available, last seq, queue, owner, rate
        # limits, tickets, the close) share round trips; the rest go one command per call
        # through redis-py.
        self._trips = RoundTrips(pool, timeout_s)
        self._ready = True
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=BREAKER_FAIL_MAX, reset_timeout=BREAKER_RESET_SECS, name="redis",
            exclude=[lambda exc: not isinstance(exc, RedisConnectionError | RedisTimeoutError)
                     or _pool_exhausted(exc)])
        reg = self._r.register_script
        # The counter scripts compare epochs with the run_id that run_id.lua reads first.
        run_id = lua_script("run_id")
        self._assign_seq = reg(run_id + lua_script("assign_seq"))
        self._seed_seq = reg(run_id + lua_script("seed_seq"))
        self._last_seq = reg(run_id + lua_script("last_seq"))
        self._kv_set = reg(lua_script("kv_set"))
        self._kv_get = reg(lua_script("kv_get"))
        self._kv_incr = reg(lua_script("kv_incr"))
        self._kv_swap = reg(lua_script("kv_swap"))
        self._presence_add = reg(lua_script("presence_add"))
        self._presence_remove = reg(lua_script("presence_remove"))
        self._agent_gone = reg(lua_script("agent_gone"))
        self._claim = reg(lua_script("claim"))
        self._release = reg(lua_script("release"))
        self._handover = reg(lua_script("handover"))
        self._requeue_front = reg(lua_script("requeue_front"))
        self._enqueue = reg(lua_script("enqueue"))
        self._dequeue = reg(lua_script("dequeue"))
        self._waiting = reg(lua_script("waiting"))
        self._history_append = reg(lua_script("history_append"))
        self._message_fanout = reg(lua_script("message_fanout"))
        # The cache read returns early without an answer; with one, presence_add.lua runs.
        self._connect_card = reg(lua_script("connect_card") + lua_script("presence_add")
                                 + "\nreturn {value, 1}\n")
        self._presence_leave = reg(lua_script("presence_leave"))
        self._any_agent = reg(lua_script("any_agent"))

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _queue_keys(self, pool: str) -> list[str]:
        return [self._k("queue", pool, "vip"), self._k("queue", pool, "std"),
                self._k("queue", pool, "at"), self._k("queue", pool, "n")]

    @_tracked
    async def start(self) -> None:
        await self._r.ping()

    async def close(self) -> None:
        await self._trips.wait_idle()
        await self._r.aclose()
        await self._r.connection_pool.disconnect()

    @property
    def ready(self) -> bool:
        return self._ready

    # -- sequence numbers and idempotency --------------------------------------------------
    @_tracked
    async def assign_seq(self, conv_id: str, client_id: str, now: float, *,
                         checked: bool = False) -> tuple[int, bool] | None:
        res = await self._trips.evalsha(
            self._assign_seq,
            keys=[self._k("seq", conv_id), self._k("cids", conv_id),
                  self._k("cidf", conv_id)],
            args=[client_id, repr(now), repr(float(CLIENT_ID_TTL_SECS)),
                  CLIENT_IDS_PER_CONVERSATION, _ms(CLIENT_ID_TTL_SECS), _ms(SEQ_IDLE_TTL_SECS),
                  "1" if checked else "0", CLIENT_ID_FILTER_BITS],
        )
        if res is None:
            return None
        if int(res[1]) == 2:
            return CHECK_DATABASE
        return int(res[0]), bool(res[1])

    @_tracked
    async def drop_client_ids(self, conv_id: str) -> None:
        await self._r.delete(self._k("cids", conv_id), self._k("cidf", conv_id))

    @_tracked
    async def forget_closed(self, conv_id: str) -> None:
        # The client-id filter too: 2 KB per chat that would otherwise stay for the client-id
        # window (24 h) after its close; a late message then asks the database, as after a
        # re-seed (the P10 soak: 353 filters for 300 open chats after 1 minute).
        await self._r.delete(self._k("cids", conv_id), self._k("cidf", conv_id),
                             self._k("seq", conv_id), self._k("hist", conv_id))

    @_tracked
    async def seed_seq(self, conv_id: str, floor: int) -> None:
        await self._seed_seq(keys=[self._k("seq", conv_id)],
                             args=[int(floor), _ms(SEQ_IDLE_TTL_SECS)])

    @_tracked
    async def last_seq(self, conv_id: str) -> int | None:
        res = await self._trips.evalsha(self._last_seq, [self._k("seq", conv_id)])
        return None if res is None else int(res)

    # -- expiring keys (sessions) -----------------------------------------------------------
    @_tracked
    async def kv_set(self, key: str, value: str, ttl_s: float, now: float) -> None:
        await self._kv_set(keys=[self._k("kv", key)], args=[value, repr(now + ttl_s), _ms(ttl_s)])

    @_tracked
    async def kv_get(self, key: str, now: float, touch_ttl_s: float | None = None) -> str | None:
        touch = "" if touch_ttl_s is None else repr(now + touch_ttl_s)
        res = await self._trips.evalsha(self._kv_get, [self._k("kv", key)],
                                        [repr(now), touch, _ms(touch_ttl_s or 0)])
        return None if res is None else str(res)

    @_tracked
    async def kv_delete(self, key: str) -> None:
        await self._r.delete(self._k("kv", key))

    @_tracked
    async def kv_incr(self, key: str, ttl_s: float, now: float) -> int:
        return int(await self._trips.evalsha(self._kv_incr, [self._k("kv", key)],
                                             [repr(now), repr(now + ttl_s), _ms(ttl_s)]))

    @_tracked
    async def kv_swap(self, key: str, expected: str | None, value: str, ttl_s: float,
                      now: float) -> bool:
        res = await self._trips.evalsha(
            self._kv_swap, [self._k("kv", key)],
            [repr(now), expected or "", "0" if expected is None else "1", value,
             repr(now + ttl_s), _ms(ttl_s)])
        return bool(int(res))

    # -- presence ---------------------------------------------------------------------------
    @_tracked
    async def presence_add(self, who: str, conn: str, node_id: str, ttl_s: float,
                           now: float) -> None:
        await self._trips.evalsha(self._presence_add, [self._k("presence", who)],
                                  [conn, f"{now + ttl_s!r}|{node_id}", repr(now), _ms(ttl_s)])

    @_tracked
    async def presence_remove(self, who: str, conn: str) -> int:
        return int(await self._trips.evalsha(self._presence_remove,
                                             [self._k("presence", who)], [conn]))

    @_tracked
    async def kv_get_and_present(self, key: str, now: float, *, who: str, conn: str,
                                 node_id: str, ttl_s: float,
                                 unless_prefix: str) -> tuple[str | None, bool]:
        res = await self._trips.evalsha(
            self._connect_card, [self._k("presence", who), self._k("kv", key)],
            [conn, f"{now + ttl_s!r}|{node_id}", repr(now), _ms(ttl_s), unless_prefix])
        return (None if res[0] is None else str(res[0])), bool(int(res[1]))

    @_tracked
    async def presence_leave(self, who: str, conn: str, *, gone_key: str, gone_value: str,
                             gone_ttl_s: float, now: float) -> int:
        return int(await self._trips.evalsha(
            self._presence_leave, [self._k("presence", who), self._k("kv", gone_key)],
            [conn, gone_value, repr(now + gone_ttl_s), _ms(gone_ttl_s)]))

    @_tracked
    async def presence_nodes(self, who: str, now: float) -> set[str]:
        entries = cast(list[str], await self._trips.call(("HVALS", self._k("presence", who))))
        return _live_nodes(entries, now)

    @_tracked
    async def presence_expiry(self, who: str) -> float | None:
        entries = cast(list[str], await self._r.hvals(self._k("presence", who)))
        return max((float(e.partition("|")[0]) for e in entries), default=None)

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
                    old_pools_json, last, old_status, since = await pipe.hmget(
                        key, ["pools", "last_assigned_at", "status", "status_since"])
                    old_pools = json.loads(old_pools_json) if old_pools_json else []
                    if old_status != status or since is None:
                        since = repr(now)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for pool in set(old_pools) - set(pools):
                        pipe.srem(self._k("pool", pool), agent_id)
                    for pool in pools:
                        pipe.sadd(self._k("pool", pool), agent_id)
                    pipe.hset(key, mapping={
                        "status": status, "pools": json.dumps(list(pools)),
                        "max_chats": int(max_chats), "name": name,
                        "last_assigned_at": last if last is not None else repr(now),
                        "status_since": since, "updated_at": repr(now),
                    })
                    pipe.hdel(key, "lapsed_from")
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
            status_since=float(h.get("status_since", 0.0)),
            updated_at=float(h.get("updated_at", 0.0)), lapsed_from=h.get("lapsed_from", ""),
        )

    @_tracked
    async def agent_get(self, agent_id: str) -> AgentLoad | None:
        return self._agent(agent_id, _hash(await self._trips.call(
            ("HGETALL", self._k("agent", agent_id)))))

    @_tracked
    async def agent_mark_gone(self, agent_id: str, *, updated_at: float, since: float,
                              now: float) -> bool:
        res = await self._agent_gone(
            keys=[self._k("agent", agent_id), self._k("presence", f"agent:{agent_id}")],
            args=[repr(updated_at), repr(since), repr(now)])
        return bool(int(res))

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
    async def any_agent_in(self, pools: Sequence[str], statuses: Sequence[str]) -> bool:
        if not pools:
            return False
        return bool(int(await self._trips.evalsha(
            self._any_agent, [self._k("pool", p) for p in pools],
            [self._k("agent", ""), *statuses])))

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

    def _owner_keys(self, conv_id: str, agent_id: str) -> list[str]:
        return [self._k("owner", conv_id), self._k("agent", agent_id),
                self._k("agentconvs", agent_id)]

    @_tracked
    async def handover(self, conv_id: str, from_agent: str, to_agent: str, now: float) -> str:
        res = int(await self._handover(
            keys=[*self._owner_keys(conv_id, from_agent), self._k("agent", to_agent),
                  self._k("agentconvs", to_agent)],
            args=[from_agent, to_agent, repr(now), conv_id]))
        return {1: "moved", 0: "not_owner"}.get(res, "no_room")

    @_tracked
    async def release_from(self, conv_id: str, agent_id: str) -> bool:
        return bool(await self._release(keys=self._owner_keys(conv_id, agent_id),
                                        args=[agent_id, conv_id]))

    @_tracked
    async def requeue_front(self, conv_id: str, from_agent: str, pool: str, now: float) -> bool:
        return bool(await self._requeue_front(
            keys=[*self._owner_keys(conv_id, from_agent), *self._queue_keys(pool)],
            args=[from_agent, conv_id, repr(now)]))

    @_tracked
    async def owner(self, conv_id: str) -> str | None:
        res = await self._trips.call(("GET", self._k("owner", conv_id)))
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
        flat = await self._trips.evalsha(self._waiting, self._queue_keys(pool)[:3])
        return [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    # -- recent history ---------------------------------------------------------------------
    @_tracked
    async def history_append(self, conv_id: str, message: dict[str, Any]) -> None:
        await self._history_append(
            keys=[self._k("hist", conv_id), self._k("seq", conv_id)],
            args=[int(message["seq"]), _history_entry(message),
                  HISTORY_STREAM_LEN, _ms(HISTORY_IDLE_TTL_SECS)],
        )

    @_tracked
    async def message_fanout(self, conv_id: str, message: dict[str, Any], visitor: str | None,
                             now: float) -> dict[str, set[str]]:
        owner, visitor_entries, agent_entries = await self._trips.evalsha(
            self._message_fanout,
            keys=[self._k("hist", conv_id), self._k("owner", conv_id),
                  self._k("presence", visitor or "-"), self._k("seq", conv_id)],
            args=[int(message["seq"]), _history_entry(message),
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
    async def history_delete(self, conv_id: str) -> None:
        await self._r.delete(self._k("hist", conv_id))

    @_tracked
    async def history(self, conv_id: str) -> list[dict[str, Any]]:
        rows = cast(list[str], await self._r.zrange(self._k("hist", conv_id), 0, -1))
        return [json.loads(row) for row in rows]

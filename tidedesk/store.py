"""The session/presence store seam: atomic counters, atomic agent-slot claims, waiting queues,
presence, expiring keys and a capped recent-history stream per conversation.

:class:`MemoryStore` is the embedded implementation; ``tidedesk.redisstore.RedisStore`` the
cluster one. Both pass ``tests/test_store_contract.py``. Every method is a coroutine and every
multi-step change is atomic (the memory store never awaits in the middle of one; Redis uses Lua).
``now`` is always passed in by the caller, so expiry is testable with fixed times.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

# Idempotency memory (issue 17), bounded: the newest CLIENT_IDS_PER_CONVERSATION client ids of
# each conversation, forgotten when nobody wrote to it for CLIENT_ID_TTL_SECS and when it
# closes. The database's unique key (conversation_id, client_id) answers for anything older.
CLIENT_ID_TTL_SECS = 24 * 3600
# 128: Redis keeps a zset this small in its compact listpack encoding (zset-max-listpack-entries)
# (~5 KB a conversation). Past it, a Bloom filter of every id the conversation took tells a new id
# from one that may be forgotten (only those cost a database read): CLIENT_ID_FILTER_BITS bits
# (2 KB a conversation), 4 a client id, so a new id is taken for a possible resend (one needless
# read) about 1 time in 200 000 at 200 messages, 1 in 500 at 1 000, 1 in 45 at 2 000.
CLIENT_IDS_PER_CONVERSATION = 128
CLIENT_ID_FILTER_BITS = 16384
# What assign_seq answers when the id may be one it forgot: look it up in the database, then
# call again with checked=True.
CHECK_DATABASE: tuple[int, bool] = (0, False)
# Messages kept per conversation in the recent-history stream used by ``resume``.
HISTORY_STREAM_LEN = 200


@dataclass(frozen=True)
class AgentLoad:
    agent_id: str
    status: str  # online | away | offline
    open_chats: int
    max_chats: int
    last_assigned_at: float  # for "ties go to the one idle longest"
    pools: tuple[str, ...]
    name: str = ""
    # When ``status`` last changed (issue 13: an agent offline longer than the grace period
    # gives their chats back).
    status_since: float = 0.0
    # When a node last told the routers about this agent (any status, a re-announce too), and
    # the status they had when a sweep counted them gone because no node holds a live socket of
    # theirs (:meth:`Store.agent_mark_gone`; "" otherwise). Both reset by every update.
    updated_at: float = 0.0
    lapsed_from: str = ""

    @property
    def has_room(self) -> bool:
        return self.status == "online" and self.open_chats < self.max_chats


class Store(abc.ABC):
    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def ready(self) -> bool:
        return True

    # -- sequence numbers and idempotency --------------------------------------------------
    @abc.abstractmethod
    async def assign_seq(self, conv_id: str, client_id: str, now: float, *,
                         checked: bool = False) -> tuple[int, bool] | None:
        """Atomically give ``client_id`` its seq: ``(seq, True)`` the first time, ``(same seq,
        False)`` after. ``None`` when the conversation's counter is unknown (never seeded, or
        the store lost it): call :meth:`seed_seq` with the database's highest seq and retry.
        :data:`CHECK_DATABASE` when the bounded memory may have forgotten this id (more than
        :data:`CLIENT_IDS_PER_CONVERSATION` ids, a quiet window, a close, a re-seed): look it
        up in the database, then call again with ``checked=True`` to take a new seq."""

    @abc.abstractmethod
    async def drop_client_ids(self, conv_id: str) -> None:
        """Forget a (closed) conversation's client ids; the database still knows them."""

    @abc.abstractmethod
    async def forget_closed(self, conv_id: str) -> None:
        """A conversation closed: forget all the store keeps for it (client ids, counter,
        recent history), so that a desk's memory follows its open chats, not every chat it
        ever had. The database has all of it: a resume reads the history from there, and a
        late message (an e-mail reply to its ticket) finds no counter and re-seeds it above the
        stored seqs, its id looked up by the unique key (issue 17)."""

    @abc.abstractmethod
    async def seed_seq(self, conv_id: str, floor: int) -> None:
        """Make the counter at least ``floor`` (never lowers it)."""

    @abc.abstractmethod
    async def last_seq(self, conv_id: str) -> int | None: ...

    # -- expiring keys (sessions) -----------------------------------------------------------
    @abc.abstractmethod
    async def kv_set(self, key: str, value: str, ttl_s: float, now: float) -> None: ...

    @abc.abstractmethod
    async def kv_get(self, key: str, now: float, touch_ttl_s: float | None = None) -> str | None:
        """The value, or None if missing/expired; ``touch_ttl_s`` slides the expiry."""

    @abc.abstractmethod
    async def kv_delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def kv_incr(self, key: str, ttl_s: float, now: float) -> int:
        """Add one to a counter and return it. A missing or expired counter starts at 1 and
        expires ``ttl_s`` after ``now``; later increments keep that expiry (a fixed window, as
        rate limits and failed sign-ins need). :meth:`kv_get` reads it as a decimal string."""

    @abc.abstractmethod
    async def kv_swap(self, key: str, expected: str | None, value: str, ttl_s: float,
                      now: float) -> bool:
        """Atomically: if the key holds ``expected`` (``None``: missing or expired), set it to
        ``value`` with a fresh TTL and return True; else change nothing and return False.
        Refresh-token rotation uses it, so two uses of one token cannot both win."""

    # -- presence ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def presence_add(self, who: str, conn: str, node_id: str, ttl_s: float,
                           now: float) -> None:
        """``who`` is ``visitor:<id>`` or ``agent:<id>``; ``conn`` a connection id."""

    @abc.abstractmethod
    async def presence_remove(self, who: str, conn: str) -> int:
        """Forget one connection; returns how many connections ``who`` still has."""

    @abc.abstractmethod
    async def presence_nodes(self, who: str, now: float) -> set[str]:
        """Node ids where ``who`` has live connections."""

    @abc.abstractmethod
    async def presence_expiry(self, who: str) -> float | None:
        """The latest expiry of ``who``'s connections, live or expired; None when the store
        holds none (never connected, all removed, or dropped some time after expiring)."""

    async def kv_get_and_present(self, key: str, now: float, *, who: str, conn: str,
                                 node_id: str, ttl_s: float,
                                 unless_prefix: str) -> tuple[str | None, bool]:
        """:meth:`kv_get` (no touch), and when the key holds a value that does not start with
        ``unless_prefix``, :meth:`presence_add` for ``who`` in the same step (one round trip
        on Redis, issue 17): ``(value, whether presence was added)``. A connect's cache read
        and its presence, when the cached answer is there to be used."""
        value = await self.kv_get(key, now)
        if value is None or value.startswith(unless_prefix):
            return value, False
        await self.presence_add(who, conn, node_id, ttl_s, now)
        return value, True

    async def presence_leave(self, who: str, conn: str, *, gone_key: str, gone_value: str,
                             gone_ttl_s: float, now: float) -> int:
        """:meth:`presence_remove`, and when ``who`` has no connection left, :meth:`kv_set` of
        ``gone_key`` in the same step (one round trip on Redis, issue 17); returns how many
        connections are left."""
        left = await self.presence_remove(who, conn)
        if left == 0:
            await self.kv_set(gone_key, gone_value, gone_ttl_s, now)
        return left

    # -- agents and ownership ---------------------------------------------------------------
    @abc.abstractmethod
    async def agent_update(self, agent_id: str, *, status: str, pools: tuple[str, ...],
                           max_chats: int, name: str, now: float) -> None: ...

    @abc.abstractmethod
    async def agent_get(self, agent_id: str) -> AgentLoad | None: ...

    @abc.abstractmethod
    async def agent_mark_gone(self, agent_id: str, *, updated_at: float, since: float,
                              now: float) -> bool:
        """Atomically: if the agent is not ``offline``, no update came since the one at
        ``updated_at``, and ``agent:<id>`` has no live connection at ``now``, make them
        ``offline`` since ``since`` and remember the status they had in ``lapsed_from``. False
        (nothing changed) otherwise. For agents whose chat node died (their grace starts)."""

    @abc.abstractmethod
    async def agents_in_pool(self, pool: str) -> list[AgentLoad]: ...

    async def any_agent_in(self, pools: Sequence[str], statuses: Sequence[str]) -> bool:
        """Whether an agent of any of ``pools`` has one of ``statuses`` (one round trip on
        Redis, issue 17): what a visitor's hello says as ``available``."""
        for pool in pools:
            if any(a.status in statuses for a in await self.agents_in_pool(pool)):
                return True
        return False

    @abc.abstractmethod
    async def claim(self, conv_id: str, agent_id: str, now: float) -> bool:
        """Atomically: if the conversation has no owner and the agent is online with a free
        slot, make the agent its owner and count the chat. Never two owners, never over limit."""

    @abc.abstractmethod
    async def release(self, conv_id: str) -> str | None:
        """Remove the owner (returned) and free their slot; idempotent."""

    @abc.abstractmethod
    async def owner(self, conv_id: str) -> str | None: ...

    @abc.abstractmethod
    async def handover(self, conv_id: str, from_agent: str, to_agent: str, now: float) -> str:
        """Atomically move a conversation from its owner ``from_agent`` to ``to_agent``:
        ``"moved"``; ``"not_owner"`` (``from_agent`` does not own it: someone else moved it)
        or ``"no_room"`` (``to_agent`` is not online or has no free slot) change nothing.
        Never two owners, never over the limit."""

    @abc.abstractmethod
    async def release_from(self, conv_id: str, agent_id: str) -> bool:
        """Remove the owner and free their slot only if it is ``agent_id``."""

    @abc.abstractmethod
    async def requeue_front(self, conv_id: str, from_agent: str, pool: str, now: float) -> bool:
        """Atomically: if ``from_agent`` owns the conversation, free their slot and put it at
        the front of the pool's queue (ahead of VIPs; given-back chats keep FIFO among
        themselves). False (nothing changed) when someone else owns it now."""

    @abc.abstractmethod
    async def agent_conversations(self, agent_id: str) -> list[str]: ...

    # -- waiting queues ---------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, pool: str, conv_id: str, vip: bool, now: float) -> None:
        """Idempotent; VIPs wait ahead of everyone else, FIFO within each class (chats given
        back by :meth:`requeue_front` wait ahead of both)."""

    @abc.abstractmethod
    async def dequeue(self, pool: str, conv_id: str) -> bool: ...

    @abc.abstractmethod
    async def waiting(self, pool: str) -> list[tuple[str, float]]:
        """``(conv_id, enqueued_at)`` in serving order."""

    # -- recent history ---------------------------------------------------------------------
    @abc.abstractmethod
    async def history_append(self, conv_id: str, message: dict[str, Any]) -> None:
        """Keep ``message`` in the conversation's recent history (the newest
        :data:`HISTORY_STREAM_LEN`, by seq, first copy wins) while the store has its counter:
        none is kept for a closed conversation (:meth:`forget_closed`; a message still in
        flight when it closed goes to the database only) or after the store lost it."""

    @abc.abstractmethod
    async def history_delete(self, conv_id: str) -> None:
        """Drop a conversation's recent history (a contact's erasure)."""

    @abc.abstractmethod
    async def history(self, conv_id: str) -> list[dict[str, Any]]:
        """The capped recent messages of a conversation, in seq order."""

    async def message_fanout(self, conv_id: str, message: dict[str, Any], visitor: str | None,
                             now: float) -> dict[str, set[str]]:
        """After a message is committed: append it to the recent history, then return the
        nodes of each recipient: ``visitor`` (None for a private note) and the conversation's
        owner (``agent:<id>``), if any. The append comes first, so a client that reconnects
        later finds the message in the history, and one that reconnected earlier is in the
        presence read here. A store may do it all in one round trip (RedisStore does)."""
        await self.history_append(conv_id, message)
        owner = await self.owner(conv_id)
        recipients = ([visitor] if visitor else []) + ([f"agent:{owner}"] if owner else [])
        return {who: await self.presence_nodes(who, now) for who in recipients}


_SWEEP_MIN = 1024


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Expiring(dict[_K, tuple[_V, float]]):
    """A dict of (value, expires_at) that drops its expired entries whenever it has doubled
    since the last sweep (amortised O(1) per write), as Redis expires keys on its own: else an
    embedded server would keep every client id and rate-limit window it ever saw."""

    sweep_at = _SWEEP_MIN

    def put(self, key: _K, value: _V, expires_at: float, now: float) -> None:
        self[key] = (value, expires_at)
        if len(self) >= self.sweep_at:
            for k in [k for k, (_, exp) in self.items() if exp <= now]:
                del self[k]
            self.sweep_at = max(_SWEEP_MIN, 2 * len(self))


def filter_bits(client_id: str, size: int = CLIENT_ID_FILTER_BITS) -> list[int]:
    """The 4 bits of a client id in a conversation's filter: four 16-bit slices of its SHA-1
    (what ``lua/assign_seq.lua`` takes with ``redis.sha1hex``), modulo the filter's size."""
    digest = hashlib.sha1(client_id.encode()).digest()
    return [int.from_bytes(digest[2 * i:2 * i + 2], "big") % size for i in range(4)]


@dataclass
class _ClientIds:
    """One conversation's remembered client ids (oldest first), its last write, and the filter
    of every id it took since its counter was 0 (None: not every one, see assign_seq.lua)."""

    seqs: OrderedDict[str, int] = field(default_factory=OrderedDict)
    at: float = 0.0
    filter: bytearray | None = None


class MemoryStore(Store):
    """Single-process store. Atomicity comes from never awaiting inside an operation."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        # conversation -> its newest client ids (bounded); conversations whose memory may lack
        # an id they have (then the database is asked); key -> (value, expires_at)
        self._client_ids: dict[str, _ClientIds] = {}
        self._forgot: set[str] = set()
        self._kv: _Expiring[str, str] = _Expiring()
        self._presence: dict[str, dict[str, tuple[str, float]]] = defaultdict(dict)
        self._agents: dict[str, AgentLoad] = {}
        self._owners: dict[str, str] = {}
        self._queues: dict[str, dict[str, tuple[int, float, int]]] = defaultdict(dict)
        self._queue_counter = 0
        self._history: dict[str, list[dict[str, Any]]] = defaultdict(list)

    async def assign_seq(self, conv_id: str, client_id: str, now: float, *,
                         checked: bool = False) -> tuple[int, bool] | None:
        ids = self._client_ids.get(conv_id)
        if ids is not None and now > ids.at + CLIENT_ID_TTL_SECS:
            del self._client_ids[conv_id]  # a quiet window: forgotten
            self._forgot.discard(conv_id)  # implied now: no ids, a counter above 0
            ids = None
        if ids is not None and client_id in ids.seqs:
            return ids.seqs[client_id], False
        if conv_id not in self._counters:
            return None
        taken = self._counters[conv_id]
        forgot = conv_id in self._forgot or (ids is None and taken > 0)
        # The same decision as lua/assign_seq.lua: a complete filter says "certainly new" or
        # "maybe seen" (then the database); without one the forgot flag decides.
        bloom = ids.filter if ids is not None else None
        if taken == 0 and bloom is None:
            bloom = bytearray(CLIENT_ID_FILTER_BITS // 8)
        bits = filter_bits(client_id) if bloom is not None else []
        if bloom is not None:
            maybe = taken > 0 and all(bloom[b >> 3] >> (b & 7) & 1 for b in bits)
            if maybe and not checked:
                return CHECK_DATABASE
        elif forgot and not checked:
            return CHECK_DATABASE
        self._counters[conv_id] += 1
        seq = self._counters[conv_id]
        if ids is None:
            ids = self._client_ids[conv_id] = _ClientIds()
        ids.seqs[client_id] = seq
        ids.at = now
        if bloom is not None:
            for b in bits:
                bloom[b >> 3] |= 1 << (b & 7)
            ids.filter = bloom
        if len(ids.seqs) > CLIENT_IDS_PER_CONVERSATION:
            ids.seqs.popitem(last=False)
            forgot = True
        if forgot:
            self._forgot.add(conv_id)
        return seq, True

    async def drop_client_ids(self, conv_id: str) -> None:
        self._client_ids.pop(conv_id, None)
        self._forgot.discard(conv_id)  # implied now: no ids, a counter above 0

    async def forget_closed(self, conv_id: str) -> None:
        await self.drop_client_ids(conv_id)
        self._counters.pop(conv_id, None)
        self._history.pop(conv_id, None)

    async def seed_seq(self, conv_id: str, floor: int) -> None:
        self._counters[conv_id] = max(self._counters.get(conv_id, 0), floor)

    async def last_seq(self, conv_id: str) -> int | None:
        return self._counters.get(conv_id)

    async def kv_set(self, key: str, value: str, ttl_s: float, now: float) -> None:
        self._kv.put(key, value, now + ttl_s, now)

    async def kv_get(self, key: str, now: float, touch_ttl_s: float | None = None) -> str | None:
        item = self._kv.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._kv[key]
            return None
        if touch_ttl_s is not None:
            self._kv[key] = (item[0], now + touch_ttl_s)
        return item[0]

    async def kv_delete(self, key: str) -> None:
        self._kv.pop(key, None)

    async def kv_incr(self, key: str, ttl_s: float, now: float) -> int:
        item = self._kv.get(key)
        if item is None or item[1] <= now:
            self._kv.put(key, "1", now + ttl_s, now)
            return 1
        count = int(item[0]) + 1
        self._kv[key] = (str(count), item[1])
        return count

    async def kv_swap(self, key: str, expected: str | None, value: str, ttl_s: float,
                      now: float) -> bool:
        item = self._kv.get(key)
        current = item[0] if item is not None and item[1] > now else None
        if current != expected:
            return False
        self._kv.put(key, value, now + ttl_s, now)
        return True

    async def presence_add(self, who: str, conn: str, node_id: str, ttl_s: float,
                           now: float) -> None:
        self._presence[who][conn] = (node_id, now + ttl_s)

    async def presence_remove(self, who: str, conn: str) -> int:
        conns = self._presence.get(who, {})
        conns.pop(conn, None)
        if not conns:
            self._presence.pop(who, None)
        return len(conns)

    async def presence_nodes(self, who: str, now: float) -> set[str]:
        return {node for node, expires in self._presence.get(who, {}).values() if expires > now}

    async def presence_expiry(self, who: str) -> float | None:
        conns = self._presence.get(who)
        return max(expires for _, expires in conns.values()) if conns else None

    async def agent_update(self, agent_id: str, *, status: str, pools: tuple[str, ...],
                           max_chats: int, name: str, now: float) -> None:
        old = self._agents.get(agent_id)
        self._agents[agent_id] = AgentLoad(
            agent_id=agent_id, status=status, open_chats=old.open_chats if old else 0,
            max_chats=max_chats, last_assigned_at=old.last_assigned_at if old else now,
            pools=pools, name=name,
            status_since=old.status_since if old and old.status == status else now,
            updated_at=now,
        )

    async def agent_get(self, agent_id: str) -> AgentLoad | None:
        return self._agents.get(agent_id)

    async def agent_mark_gone(self, agent_id: str, *, updated_at: float, since: float,
                              now: float) -> bool:
        agent = self._agents.get(agent_id)
        if (agent is None or agent.status == "offline" or agent.updated_at != updated_at
                or await self.presence_nodes(f"agent:{agent_id}", now)):  # no await inside
            return False
        self._agents[agent_id] = replace(agent, status="offline", status_since=since,
                                         lapsed_from=agent.status)
        return True

    async def agents_in_pool(self, pool: str) -> list[AgentLoad]:
        return [a for a in self._agents.values() if pool in a.pools]

    async def claim(self, conv_id: str, agent_id: str, now: float) -> bool:
        agent = self._agents.get(agent_id)
        if agent is None or conv_id in self._owners or not agent.has_room:
            return False
        self._owners[conv_id] = agent_id
        self._agents[agent_id] = replace(agent, open_chats=agent.open_chats + 1,
                                          last_assigned_at=now)
        return True

    async def release(self, conv_id: str) -> str | None:
        agent_id = self._owners.pop(conv_id, None)
        if agent_id is not None and agent_id in self._agents:
            agent = self._agents[agent_id]
            self._agents[agent_id] = replace(agent, open_chats=max(0, agent.open_chats - 1))
        return agent_id

    async def owner(self, conv_id: str) -> str | None:
        return self._owners.get(conv_id)

    async def handover(self, conv_id: str, from_agent: str, to_agent: str, now: float) -> str:
        if self._owners.get(conv_id) != from_agent:
            return "not_owner"
        target = self._agents.get(to_agent)
        if target is None or not target.has_room or to_agent == from_agent:
            return "no_room"
        self._owners[conv_id] = to_agent
        self._agents[to_agent] = replace(target, open_chats=target.open_chats + 1,
                                         last_assigned_at=now)
        old = self._agents.get(from_agent)
        if old is not None:
            self._agents[from_agent] = replace(old, open_chats=max(0, old.open_chats - 1))
        return "moved"

    async def release_from(self, conv_id: str, agent_id: str) -> bool:
        if self._owners.get(conv_id) != agent_id:
            return False
        await self.release(conv_id)  # no await point inside: still atomic
        return True

    async def requeue_front(self, conv_id: str, from_agent: str, pool: str, now: float) -> bool:
        if self._owners.get(conv_id) != from_agent:
            return False
        await self.release(conv_id)
        q = self._queues[pool]
        self._queue_counter += 1
        q[conv_id] = (-1, now, self._queue_counter)
        return True

    async def agent_conversations(self, agent_id: str) -> list[str]:
        return sorted(c for c, a in self._owners.items() if a == agent_id)

    async def enqueue(self, pool: str, conv_id: str, vip: bool, now: float) -> None:
        q = self._queues[pool]
        if conv_id not in q:
            self._queue_counter += 1
            q[conv_id] = (0 if vip else 1, now, self._queue_counter)

    async def dequeue(self, pool: str, conv_id: str) -> bool:
        return self._queues[pool].pop(conv_id, None) is not None

    async def waiting(self, pool: str) -> list[tuple[str, float]]:
        q = self._queues.get(pool, {})
        order = sorted(q.items(), key=lambda kv: (kv[1][0], kv[1][2]))
        return [(conv_id, entry[1]) for conv_id, entry in order]

    async def history_append(self, conv_id: str, message: dict[str, Any]) -> None:
        if conv_id not in self._counters:
            return  # closed (forgotten) or never seeded: the database has it
        items = self._history[conv_id]
        if any(m["seq"] == message["seq"] for m in items[-HISTORY_STREAM_LEN:]):
            return
        items.append(json.loads(json.dumps(message)))
        items.sort(key=lambda m: m["seq"])
        del items[:-HISTORY_STREAM_LEN]

    async def history(self, conv_id: str) -> list[dict[str, Any]]:
        return list(self._history.get(conv_id, []))

    async def history_delete(self, conv_id: str) -> None:
        self._history.pop(conv_id, None)


"""The connect cache (issue 17): what a visitor's connect needs from the database (the
visitor's locale, name, tags and site, and their open conversation's id, state and pool), kept
in the store so a reconnecting widget costs no MariaDB read.

Contract:

- :meth:`ConnectCache.card` answers what the database would: the visitor (None when unknown)
  and their newest conversation that is not closed (None when they have none). A miss (a
  first connect, an expired entry, a Redis wipe) reads the database and fills the entry.
- Every write that could change the answer forgets the entry: the repositories of
  :mod:`tidedesk.storage` call :meth:`ConnectCache.forget` (registered as a listener on the
  :class:`~tidedesk.storage.database.Database`) with the visitor ids a write touched, after
  it committed: a conversation created, its state, pool or agent changed (routed, assigned,
  closed, reopened, transferred, given back), conversations deleted (retention), a visitor's
  contact fields changed or erased (privacy), an identify call's context.
- A reader racing a write never puts the old answer back: a miss first takes a *lease* (the
  key set to a token if it is absent, :meth:`~tidedesk.store.Store.kv_swap`), reads the
  database, then stores the answer only if the key still holds its lease. A write's
  :meth:`forget` deletes the key, lease included, so a read that began before the write
  commits fills nothing (the Memcache "lease" of Nishtala et al., NSDI 2013).
- A forget the store could not take (it was down; the write is kept) is tried again with
  the process's next forget or read, and entries expire after :data:`CONNECT_CACHE_TTL_SECS`
  anyway: the bound on staleness should the process end before the store is back.

The visitor's name is kept sealed as the database keeps it (``name_enc``) when there is a
cipher, so the store holds no plaintext name the database would not.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

import msgspec

from tidedesk.storage import Storage
from tidedesk.storage.visitors import VISITOR_FIELDS
from tidedesk.store import Store

log = logging.getLogger(__name__)

# How long an entry lives without being forgotten: the bound on staleness if a forget is lost
# (the store down during a write). A widget reconnects within seconds (page loads, network
# changes), so minutes keep nearly every reconnect a hit.
CONNECT_CACHE_TTL_SECS = 600.0
# A miss's lease lasts at most this long: longer than a database read takes, short enough that
# a reader that died holding it delays nobody's refill for long (others read the database
# meanwhile, uncached).
LEASE_TTL_SECS = 5.0
_LEASE = "lease:"
# Forgets kept for a store that was down, at most (beyond them the TTL is the bound).
MAX_UNFORGOTTEN = 10_000


def cache_key(visitor_id: str) -> str:
    return f"connect:{visitor_id}"


class OpenConversation(msgspec.Struct, frozen=True):
    id: str
    state: str
    pool: str


class Presence(msgspec.Struct, frozen=True):
    """The connection a :meth:`ConnectCache.card` registers in presence with its read."""

    who: str
    conn: str
    node_id: str
    ttl_s: float


class VisitorCard(msgspec.Struct, frozen=True):
    """What a connect needs: the visitor and their open conversation (None: none yet).
    ``present``: the card's read registered the connection's presence too."""

    visitor_id: str
    locale: str
    name: str
    tags: tuple[str, ...]
    site: str
    conversation: OpenConversation | None
    present: bool = False


class _Stored(msgspec.Struct, frozen=True, array_like=True):
    """The entry as kept: ``name`` sealed (``sealed`` True) or plain (no cipher)."""

    locale: str
    name: str
    sealed: bool
    tags: tuple[str, ...]
    site: str
    conversation: OpenConversation | None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Stored).decode


class ConnectCache:
    """``storage``'s writes forget entries of this cache from construction on."""

    def __init__(self, store: Store, storage: Storage, *,
                 clock: Callable[[], float] = time.time,
                 ttl_s: float = CONNECT_CACHE_TTL_SECS) -> None:
        self.store = store
        self.storage = storage
        self.clock = clock
        self.ttl_s = ttl_s
        # Hits and misses since start (tests and benchmarks read them).
        self.hits = 0
        self.misses = 0
        # Visitors whose forget the store did not take yet (insertion order, bounded).
        self._unforgotten: dict[str, None] = {}
        storage.database.visitor_listeners.append(self.forget)

    async def card(self, visitor_id: str,
                   presence: Presence | None = None) -> VisitorCard | None:
        """The visitor and their open conversation; None for an unknown visitor. With
        ``presence``, a hit registers it in the same store round trip (issue 17, P1: a
        reconnect's read and presence were two); ``card.present`` says whether it did."""
        if self._unforgotten:
            await self._flush()
        key, now = cache_key(visitor_id), self.clock()
        present = False
        if presence is None:
            raw = await self.store.kv_get(key, now)
        else:
            raw, present = await self.store.kv_get_and_present(
                key, now, who=presence.who, conn=presence.conn, node_id=presence.node_id,
                ttl_s=presence.ttl_s, unless_prefix=_LEASE)
        if raw is not None and not raw.startswith(_LEASE):
            try:
                card = self._unpack(visitor_id, _decode(raw), present)
            except (msgspec.DecodeError, msgspec.ValidationError):
                card = None  # another version's entry, or a key it cannot open: a miss
            if card is not None:
                self.hits += 1
                return card
            raw = None
        self.misses += 1
        lease = None
        if raw is None:
            token = _LEASE + uuid.uuid4().hex
            if await self.store.kv_swap(key, None, token, LEASE_TTL_SECS, now):
                lease = token
        visitor = await self.storage.visitors.get(visitor_id)
        if visitor is None:
            if present and presence is not None:  # an entry it could not read, then no row
                await self.store.presence_remove(presence.who, presence.conn)
            return None  # not cached: the lease expires by itself
        conv = await self.storage.conversations.open_for_visitor(visitor_id)
        cipher = self.storage.cipher
        kept = visitor.name_enc if cipher is not None and visitor.name_enc else None
        opened = None if conv is None else OpenConversation(conv.id, conv.state, conv.pool)
        stored = _Stored(visitor.locale, visitor.name if kept is None else kept,
                         kept is not None, visitor.tag_list, visitor.site, opened)
        if lease is not None:
            await self.store.kv_swap(key, lease, _encode(stored).decode(), self.ttl_s,
                                     self.clock())
        return VisitorCard(visitor_id, visitor.locale, visitor.name, visitor.tag_list,
                           visitor.site, opened, present)

    def _unpack(self, visitor_id: str, stored: _Stored, present: bool) -> VisitorCard | None:
        name: str | None = stored.name
        if stored.sealed:
            cipher = self.storage.cipher
            name = cipher.decrypt(stored.name, VISITOR_FIELDS["name"]) if cipher else None
            if name is None:
                return None
        assert name is not None
        return VisitorCard(visitor_id, stored.locale, name, stored.tags, stored.site,
                           stored.conversation, present)

    async def forget(self, visitor_ids: Sequence[str]) -> None:
        """Drop these visitors' entries (and any lease on them): their next connect reads the
        database. Never raises: the write that calls it has committed. A forget the store
        could not take (it was down) is kept and tried again with the next forget or card,
        so a Redis that comes back with its data (persistence) does not serve the old entry;
        the TTL bounds it should this process end first."""
        self._unforgotten.update(dict.fromkeys(visitor_ids))
        await self._flush()

    async def _flush(self) -> None:
        while self._unforgotten:
            visitor_id = next(iter(self._unforgotten))
            try:
                await self.store.kv_delete(cache_key(visitor_id))
            except Exception as exc:  # the store is down: keep it for the next try
                while len(self._unforgotten) > MAX_UNFORGOTTEN:
                    del self._unforgotten[next(iter(self._unforgotten))]
                log.warning("connect cache: could not forget visitors' entries; trying again "
                            "with the next write", extra={"visitors": len(self._unforgotten),
                                                          "error": str(exc)})
                return
            self._unforgotten.pop(visitor_id, None)

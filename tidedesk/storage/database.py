"""What every repository shares: the shards, the thread pool, the circuit breaker and the cipher.

Blocking peewee calls run in a thread pool (one thread for SQLite, which serialises writes
anyway; ``pool_size`` threads for MySQL/MariaDB) so the Tornado loop never waits on disk.
Messages are sharded by conversation (:func:`tidedesk.models.shard_index`); everything else
lives in the first database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import peewee as pw
import pybreaker

from tidedesk.crypto import FieldCipher
from tidedesk.errors import StorageUnavailable
from tidedesk.models import Shard, bind_models, migrate, open_database, shard_index

T = TypeVar("T")
# Told, after a write committed, which visitors' connect data it may have changed (their
# conversation created, its state/pool/agent changed or deleted, their contact fields).
VisitorsChanged = Callable[[Sequence[str]], Awaitable[None]]

# Largest page a client may ask for in one history request.
MAX_PAGE = 500
# Circuit breaker: after this many database failures in a row, stop calling the database for
# this long and fail at once (routers then hold their messages in the broker).
BREAKER_FAIL_MAX = 5
BREAKER_RESET_SECS = 5.0
_DB_DOWN = (pw.OperationalError, pw.InterfaceError)


def _not_a_db_outage(exc: BaseException) -> bool:
    """Only connection-level errors open the breaker; a unique-key clash is not an outage."""
    return not isinstance(exc, _DB_DOWN)


class _Breaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker, without its lock held for the whole call: pybreaker's ``call``
    runs the guarded function inside ``with self._lock``, so however many threads the pool had,
    one query ran at a time (issue 17: four 0.2 s queries took 1.09 s instead of 0.2), and in
    the half-open state the trial call, when the database is still down, held every other
    call until its connect timed out. Here the lock guards only the state's bookkeeping (which
    pybreaker's state transitions take on their own); in half-open several trial calls may
    run at once, and the first answer closes or re-opens the circuit."""

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            state = self.state
        return state.call(func, *args, **kwargs)


def new_id() -> str:
    return uuid.uuid4().hex


def clamp_page(limit: int) -> int:
    """A page size between 1 and :data:`MAX_PAGE`."""
    return max(1, min(limit, MAX_PAGE))


class Database:
    """The shards and the pool that runs their blocking calls. ``cipher`` seals visitors'
    personal fields and TOTP seeds (and message bodies with ``encrypt_bodies``)."""

    def __init__(self, urls: Sequence[str], pool_size: int = 4, *,
                 cipher: FieldCipher | None = None, encrypt_bodies: bool = False) -> None:
        if not urls:
            raise ValueError("at least one database URL is needed")
        if encrypt_bodies and cipher is None:
            raise ValueError("encrypt_bodies needs a cipher")
        self.cipher = cipher
        self.encrypt_bodies = encrypt_bodies
        self.shards: list[Shard] = [
            bind_models(open_database(url, pool_size), main=(i == 0)) for i, url in enumerate(urls)
        ]
        self.main = self.shards[0]
        sqlite = isinstance(self.main.db, pw.SqliteDatabase)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if sqlite else pool_size, thread_name_prefix="tidedesk-db"
        )
        self.breaker = _Breaker(
            fail_max=BREAKER_FAIL_MAX, reset_timeout=BREAKER_RESET_SECS,
            exclude=[_not_a_db_outage], name="database")
        # issue 17: the connect cache (tidedesk/connect_cache.py) listens here.
        self.visitor_listeners: list[VisitorsChanged] = []

    async def visitors_changed(self, visitor_ids: Sequence[str]) -> None:
        """Tell the listeners (after the write committed); each one must not raise."""
        if visitor_ids:
            for listener in self.visitor_listeners:
                await listener(visitor_ids)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking database function in the pool, behind the circuit breaker.

        Raises :class:`StorageUnavailable` when the database is down or the breaker is open."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.breaker.call, fn, *args)
        except pybreaker.CircuitBreakerError:
            raise StorageUnavailable("the database is unavailable (circuit open); retry "
                                     "shortly") from None
        except _DB_DOWN as exc:
            raise StorageUnavailable(f"the database is unavailable: {exc}") from exc

    @property
    def available(self) -> bool:
        return self.breaker.current_state != pybreaker.STATE_OPEN

    def shard_for(self, conv_id: str) -> Shard:
        return self.shards[shard_index(conv_id, len(self.shards))]

    def migrate_all(self) -> int:
        version = 0
        for shard in self.shards:
            version = migrate(shard)
        return version

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for shard in self.shards:
            if not shard.db.is_closed():
                shard.db.close()

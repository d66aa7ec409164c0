"""Retention (issue 18): closed conversations older than ``TIDEDESK_RETENTION_DAYS`` are deleted
(the conversation, its ticket, its messages in every shard, its recent history), by a bounded
periodic job. Every router runs it; a lease in the store seam lets one at a time work, and a
batch deleted twice is harmless, so several routers are safe. Per site later (issue 16's
sites): this is the global setting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tidedesk.storage import Storage
from tidedesk.store import Store

log = logging.getLogger(__name__)

LEASE_KEY = "retention-lease"
BATCH = 200  # conversations per batch
BATCHES_PER_RUN = 10  # then the job yields until the next run: bounded work per run
EVERY_S = 3600.0


class RetentionJob:
    def __init__(self, *, storage: Storage, store: Store, days: int, owner: str,
                 clock: Callable[[], float] = time.time, every_s: float = EVERY_S,
                 delete_files: Callable[[str], Awaitable[int]] | None = None) -> None:
        self.storage = storage
        # A conversation's attachment files (rows and bytes), deleted before its messages.
        self.delete_files = delete_files
        self.store = store
        self.days = days
        self.owner = owner
        self.clock = clock
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One bounded run; the number of conversations deleted (0 when another router holds
        the lease or nothing is old enough)."""
        if self.days <= 0:
            return 0
        now = self.clock()
        if not await self.store.kv_swap(LEASE_KEY, None, self.owner, self.every_s / 2, now):
            return 0
        deleted = 0
        try:
            cutoff = now - self.days * 86400
            for _ in range(BATCHES_PER_RUN):
                ids = await self.storage.conversations.closed_before(cutoff, BATCH)
                if not ids:
                    break
                if self.delete_files is not None:
                    for conv_id in ids:
                        await self.delete_files(conv_id)
                await self.storage.messages.delete(ids)
                for conv_id in ids:
                    await self.store.history_delete(conv_id)
                deleted += await self.storage.conversations.delete(ids)
        finally:
            await self.store.kv_delete(LEASE_KEY)
        if deleted:
            await self.storage.audit.record("system", "retention.deleted", "",
                                            {"conversations": deleted, "days": self.days})
            log.info("retention deleted closed conversations",
                     extra={"conversations": deleted, "days": self.days})
        return deleted

    def start(self) -> None:
        if self.days > 0:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the next run retries; history is never half-deleted
                log.warning("retention run failed; the next one retries",  # per conversation
                            extra={"error": str(exc)})
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

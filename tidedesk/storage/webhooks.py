"""Webhooks and their deliveries. A delivery row is both the durable outbox entry of one event
for one hook and its line in the delivery log (status, attempts, last code and latency)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tidedesk.storage.database import Database, clamp_page, new_id
from tidedesk.storage.records import Webhook, WebhookDelivery

T = TypeVar("T")


def _hook(row: Any) -> Webhook:
    return Webhook(id=row.id, url=row.url, events=tuple(e for e in row.events.split(",") if e),
                   secret=row.secret, created_by=row.created_by, created_at=row.created_at,
                   failing_since=row.failing_since)


def _delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id, hook_id=row.hook_id, event_id=row.event_id, event=row.event, ts=row.ts,
        body=row.body, status=row.status, attempts=row.attempts, next_at=row.next_at,
        last_code=row.last_code, last_latency_ms=row.last_latency_ms,
        last_error=row.last_error, created_at=row.created_at, updated_at=row.updated_at)


class WebhookRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _run(self, fn: Callable[[Any, Any], T]) -> Awaitable[T]:
        main = self._db.main

        def work() -> T:
            with main.db.connection_context():
                return fn(main["Webhook"], main["WebhookDelivery"])

        return self._db.run(work)

    async def create(self, *, url: str, events: tuple[str, ...], secret: str,
                     created_by: str) -> Webhook:
        return await self._run(lambda hook, _d: _hook(hook.create(
            id=new_id(), url=url, events=",".join(events), secret=secret,
            created_by=created_by, created_at=time.time())))

    async def all(self) -> list[Webhook]:
        return await self._run(lambda hook, _d: [
            _hook(r) for r in hook.select().where(~hook.deleted).order_by(hook.created_at)])

    async def get(self, hook_id: str) -> Webhook | None:
        def fn(hook: Any, _d: Any) -> Webhook | None:
            row = hook.get_or_none((hook.id == hook_id) & ~hook.deleted)
            return _hook(row) if row is not None else None

        return await self._run(fn)

    async def delete(self, hook_id: str) -> bool:
        """Soft delete (its delivery log stays readable in the database); pending deliveries
        of it are dropped when they come due."""
        return bool(await self._run(lambda hook, _d: hook.update(deleted=True).where(
            (hook.id == hook_id) & ~hook.deleted).execute()))

    async def set_failing(self, hook_id: str, since: float | None) -> None:
        await self._run(lambda hook, _d: hook.update(failing_since=since).where(
            hook.id == hook_id).execute())

    async def add_deliveries(self, hooks: Sequence[Webhook], *, event_id: str, event: str,
                             ts: float, body: str, now: float) -> list[str]:
        """One pending delivery per hook (once per event and hook, however often this runs
        for the same event); returns the new rows' ids."""

        def fn(_h: Any, delivery: Any) -> list[str]:
            ids = []
            for hook in hooks:
                row_id = new_id()
                inserted = delivery.insert(
                    id=row_id, hook_id=hook.id, event_id=event_id, event=event, ts=ts,
                    body=body, next_at=now, created_at=now,
                    updated_at=now).on_conflict_ignore().as_rowcount().execute()
                if inserted:  # rows, not lastrowid: that is 0 on MySQL for a text key
                    ids.append(row_id)
            return ids

        return await self._run(fn)

    async def due(self, now: float, limit: int = 100) -> list[WebhookDelivery]:
        """Pending deliveries whose time has come, oldest event first."""
        return await self._run(lambda _h, d: [
            _delivery(r) for r in d.select().where((d.status == "pending") & (d.next_at <= now))
            .order_by(d.ts, d.id).limit(limit)])

    async def next_due_at(self) -> float | None:
        def fn(_h: Any, d: Any) -> float | None:
            row = d.select(d.next_at).where(d.status == "pending").order_by(d.next_at).first()
            return row.next_at if row is not None else None

        return await self._run(fn)

    async def claim(self, delivery_id: str, now: float, lease_s: float) -> bool:
        """Take a due delivery for one attempt (pushes its time ``lease_s`` ahead, so another
        dispatcher polling the same table leaves it, and a dispatcher that died mid-attempt
        has it tried again after the lease). True when this caller got it."""
        return bool(await self._run(lambda _h, d: d.update(next_at=now + lease_s).where(
            (d.id == delivery_id) & (d.status == "pending") & (d.next_at <= now)).execute()))

    async def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        def fn(_h: Any, d: Any) -> WebhookDelivery | None:
            row = d.get_or_none(d.id == delivery_id)
            return _delivery(row) if row is not None else None

        return await self._run(fn)

    async def record_attempt(self, delivery_id: str, *, status: str, attempts: int,
                             next_at: float, code: int | None, latency_ms: int | None,
                             error: str, now: float) -> None:
        await self._run(lambda _h, d: d.update(
            status=status, attempts=attempts, next_at=next_at, last_code=code,
            last_latency_ms=latency_ms, last_error=error[:255], updated_at=now).where(
            d.id == delivery_id).execute())

    async def resend(self, hook_id: str, delivery_id: str, now: float) -> bool:
        """Send a delivery again now (whatever its status); False when there is none."""
        return bool(await self._run(lambda _h, d: d.update(
            status="pending", next_at=now, updated_at=now).where(
            (d.id == delivery_id) & (d.hook_id == hook_id)).execute()))

    async def log(self, hook_id: str, limit: int = 100) -> list[WebhookDelivery]:
        """A hook's deliveries, newest first."""
        limit = clamp_page(limit)
        return await self._run(lambda _h, d: [
            _delivery(r) for r in d.select().where(d.hook_id == hook_id)
            .order_by(d.created_at.desc(), d.id).limit(limit)])

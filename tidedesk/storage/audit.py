"""The audit log: who did what to which target, newest first."""

from __future__ import annotations

import json
from typing import Any

from tidedesk.storage.database import Database, clamp_page
from tidedesk.storage.records import AuditEntry


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record_sync(self, actor: str, action: str, target: str = "",
                    detail: dict[str, Any] | None = None) -> None:
        main = self._db.main
        with main.db.connection_context():
            main["AuditLog"].create(actor=actor, action=action, target=target,
                                    detail=json.dumps(detail or {}, sort_keys=True))

    async def record(self, actor: str, action: str, target: str = "",
                     detail: dict[str, Any] | None = None) -> None:
        await self._db.run(self.record_sync, actor, action, target, detail)

    async def entries(self, *, limit: int = 100, before_id: int | None = None,
                      action: str | None = None) -> list[AuditEntry]:
        """Audit entries newest first; ``before_id`` pages back, ``action`` filters by prefix
        (``auth.`` = every sign-in event)."""
        limit = clamp_page(limit)

        def work() -> list[AuditEntry]:
            main = self._db.main
            model = main["AuditLog"]
            query = model.select().order_by(model.id.desc()).limit(limit)
            if before_id is not None:
                query = query.where(model.id < before_id)
            if action:
                query = query.where(model.action.startswith(action))
            with main.db.connection_context():
                return [AuditEntry(id=r.id, ts=r.ts, actor=r.actor, action=r.action,
                                   target=r.target, detail=json.loads(r.detail or "{}"))
                        for r in query]

        return await self._db.run(work)

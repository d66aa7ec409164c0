"""Sites: each shop's settings as one JSON object (checked by ``tidedesk/sites.py``)."""

from __future__ import annotations

import json
import time
from typing import Any

from tidedesk.storage.database import Database


class SiteRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> dict[str, Any] | None:
        """The stored settings of a live site (None: never stored, or deleted)."""

        def work() -> dict[str, Any] | None:
            main = self._db.main
            model = main["Site"]
            with main.db.connection_context():
                row = model.get_or_none((model.name == name) & ~model.deleted)
                return dict(json.loads(row.settings)) if row is not None else None

        return await self._db.run(work)

    async def is_deleted(self, name: str) -> bool:
        def work() -> bool:
            main = self._db.main
            model = main["Site"]
            with main.db.connection_context():
                return model.get_or_none((model.name == name) & model.deleted) is not None

        return await self._db.run(work)

    async def put(self, name: str, settings: dict[str, Any]) -> None:
        def work() -> None:
            main = self._db.main
            model = main["Site"]
            body = json.dumps(settings, ensure_ascii=False, sort_keys=True)
            with main.db.connection_context():
                updated = model.update(settings=body, deleted=False,
                                       updated_at=time.time()).where(model.name == name).execute()
                if not updated:
                    model.insert(name=name, settings=body, updated_at=time.time()) \
                        .on_conflict_ignore().execute()

        await self._db.run(work)

    async def delete(self, name: str) -> bool:
        def work() -> bool:
            main = self._db.main
            model = main["Site"]
            with main.db.connection_context():
                return bool(model.update(deleted=True, updated_at=time.time()).where(
                    (model.name == name) & ~model.deleted).execute())

        return await self._db.run(work)

    async def names(self) -> list[str]:
        def work() -> list[str]:
            main = self._db.main
            model = main["Site"]
            with main.db.connection_context():
                return [r.name for r in model.select(model.name).where(~model.deleted)
                        .order_by(model.name)]

        return await self._db.run(work)

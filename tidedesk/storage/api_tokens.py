"""API tokens of integrations: created, listed, revoked; looked up by the hash of the token."""

from __future__ import annotations

import time
from typing import Any

from tidedesk.storage.database import Database, new_id
from tidedesk.storage.records import ApiToken


def _record(row: Any) -> ApiToken:
    return ApiToken(id=row.id, name=row.name,
                    scopes=tuple(s for s in row.scopes.split(",") if s),
                    created_by=row.created_by, created_at=row.created_at,
                    revoked_at=row.revoked_at)


class ApiTokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, *, name: str, scopes: tuple[str, ...], token_hash: str,
                     created_by: str) -> ApiToken:
        def work() -> ApiToken:
            main = self._db.main
            model = main["ApiToken"]
            with main.db.connection_context():
                row = model.create(id=new_id(), name=name, scopes=",".join(scopes),
                                   token_hash=token_hash, created_by=created_by,
                                   created_at=time.time())
                return _record(row)

        return await self._db.run(work)

    async def live_by_hash(self, token_hash: str) -> ApiToken | None:
        """The token with this hash, unless it was revoked."""

        def work() -> ApiToken | None:
            main = self._db.main
            model = main["ApiToken"]
            with main.db.connection_context():
                row = model.get_or_none((model.token_hash == token_hash)
                                        & model.revoked_at.is_null())
                return _record(row) if row is not None else None

        return await self._db.run(work)

    async def all(self) -> list[ApiToken]:
        """Every token not revoked, newest first."""

        def work() -> list[ApiToken]:
            main = self._db.main
            model = main["ApiToken"]
            with main.db.connection_context():
                return [_record(r) for r in model.select().where(model.revoked_at.is_null())
                        .order_by(model.created_at.desc())]

        return await self._db.run(work)

    async def revoke(self, token_id: str) -> ApiToken | None:
        """Revoke a live token; None when there is no live token with this id."""

        def work() -> ApiToken | None:
            main = self._db.main
            model = main["ApiToken"]
            with main.db.connection_context():
                row = model.get_or_none((model.id == token_id) & model.revoked_at.is_null())
                if row is None:
                    return None
                row.revoked_at = time.time()
                row.save()
                return _record(row)

        return await self._db.run(work)

"""Ended sign-ins (token families): the session store holds them for speed, the database for
when the store lost them (a Redis or embedded-process restart)."""

from __future__ import annotations

import time

from tidedesk.storage.database import Database


class SignInRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def revoke(self, family: str, agent_id: str, reason: str) -> None:
        def work() -> None:
            main = self._db.main
            model = main["RevokedSignIn"]
            with main.db.connection_context():
                model.insert(family=family, agent_id=agent_id, reason=reason,
                             revoked_at=time.time()).on_conflict_ignore().execute()

        await self._db.run(work)

    async def is_revoked(self, family: str) -> bool:
        def work() -> bool:
            main = self._db.main
            model = main["RevokedSignIn"]
            with main.db.connection_context():
                return model.get_or_none(model.family == family) is not None

        return await self._db.run(work)

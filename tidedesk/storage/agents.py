"""Agents: accounts, their pools and capacity, and their TOTP seed (encrypted at rest)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from tidedesk.storage.database import Database
from tidedesk.storage.records import Agent

TOTP_CONTEXT = "agent.totp_secret"


def _agent_key(agent_id: int | str) -> int | None:
    """The primary key an id names; None for an id that cannot be one (no such agent)."""
    try:
        return int(agent_id)
    except (TypeError, ValueError):
        return None


class AgentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _totp_fields(self, secret: str | None) -> dict[str, Any]:
        """The columns that store a TOTP seed: encrypted when we hold a key."""
        cipher = self._db.cipher
        if cipher is None:
            return {"totp_secret": secret, "totp_secret_enc": None}
        return {"totp_secret": None, "totp_secret_enc":
                cipher.encrypt(secret, TOTP_CONTEXT) if secret else None}

    def _record(self, row: Any) -> Agent | None:
        """The agent with the plaintext TOTP seed. A seed we cannot decrypt (no key here) still
        reads as set, so 'has 2FA' stays true and sign-in fails closed."""
        if row is None:
            return None
        secret = row.totp_secret
        if row.totp_secret_enc:
            cipher = self._db.cipher
            plain = cipher.decrypt(row.totp_secret_enc, TOTP_CONTEXT) if cipher else None
            secret = plain or "!undecryptable"
        return Agent(id=row.id, email=row.email, name=row.name, password_hash=row.password_hash,
                     totp_secret=secret, role=row.role, pools=row.pools,
                     max_chats=row.max_chats, active=row.active, created_at=row.created_at)

    def create_sync(self, *, email: str, name: str, password_hash: str, role: str,
                    pools: Iterable[str], max_chats: int, totp_secret: str | None) -> Agent:
        main = self._db.main
        with main.db.connection_context():
            row = main["Agent"].create(
                email=email.lower(), name=name, password_hash=password_hash, role=role,
                pools=",".join(pools), max_chats=max_chats, **self._totp_fields(totp_secret))
        agent = self._record(row)
        assert agent is not None
        return agent

    def by_email_sync(self, email: str) -> Agent | None:
        main = self._db.main
        model = main["Agent"]
        with main.db.connection_context():
            return self._record(model.get_or_none(model.email == email.strip().lower()))

    def get_sync(self, agent_id: int | str) -> Agent | None:
        main = self._db.main
        model = main["Agent"]
        key = _agent_key(agent_id)
        if key is None:
            return None
        with main.db.connection_context():
            return self._record(model.get_or_none(model.id == key))

    def all_sync(self) -> list[Agent]:
        main = self._db.main
        model = main["Agent"]
        with main.db.connection_context():
            return [a for a in map(self._record, model.select().order_by(model.id))
                    if a is not None]

    async def by_email(self, email: str) -> Agent | None:
        return await self._db.run(self.by_email_sync, email)

    async def get(self, agent_id: int | str) -> Agent | None:
        return await self._db.run(self.get_sync, agent_id)

    async def all(self) -> list[Agent]:
        return await self._db.run(self.all_sync)

    async def by_invite(self, invite_hash: str) -> Agent | None:
        """The agent invited with this token hash, while the invitation has not expired."""

        def work() -> Agent | None:
            main = self._db.main
            model = main["Agent"]
            with main.db.connection_context():
                row = model.get_or_none((model.invite_hash == invite_hash)
                                        & (model.invite_expires > time.time()))
                return self._record(row)

        return await self._db.run(work)

    async def update(self, agent_id: int | str, **fields: Any) -> bool:
        """Change an agent's ``role``, ``totp_secret`` ...; False if there is no such agent."""
        if "totp_secret" in fields:
            fields.update(self._totp_fields(fields.pop("totp_secret")))

        def work() -> bool:
            main = self._db.main
            model = main["Agent"]
            key = _agent_key(agent_id)
            if key is None:
                return False
            with main.db.connection_context():
                return bool(model.update(**fields).where(model.id == key).execute())

        return await self._db.run(work)

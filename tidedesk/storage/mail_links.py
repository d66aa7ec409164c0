"""Reply mails' one-time chat links (tidedesk/mail/links.py): issued when a mail is built,
spent once by the widget. Only the code's SHA-256 is stored."""

from __future__ import annotations

from typing import Any

import msgspec

from tidedesk.mail.links import (
    LINK_CODE_KEEP_SECS,
    LINK_CODE_TTL_SECS,
    Refusal,
    link_code_hash,
    new_link_code,
    refusal,
)
from tidedesk.storage.database import Database


class MailLink(msgspec.Struct, frozen=True, kw_only=True):
    """What a spent code opened."""

    visitor_id: str
    conversation_id: str


class MailLinkRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _model(self) -> Any:
        return self._db.main["MailLinkCode"]

    async def issue(self, visitor_id: str, conversation_id: str, now: float) -> str:
        """A new code for one mail (returned; only its hash is kept), usable once within
        ``LINK_CODE_TTL_SECS``. Codes long past their expiry are deleted on the way (by the
        expiry index: bounded work), so the table holds about a month of mail."""
        code = new_link_code()

        def work() -> None:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                model.delete().where(model.expires_at < now - LINK_CODE_KEEP_SECS).execute()
                model.insert(code_hash=link_code_hash(code), visitor_id=visitor_id,
                             conversation_id=conversation_id,
                             expires_at=now + LINK_CODE_TTL_SECS).execute()

        await self._db.run(work)
        return code

    async def redeem(self, code: str, now: float) -> MailLink | Refusal:
        """Spend ``code``: what it opens, the first time within its lifetime (one conditional
        UPDATE, so two clicks at once cannot both win); else why not."""
        code_hash = link_code_hash(code)

        def work() -> MailLink | Refusal:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                won = model.update(used_at=now).where(
                    (model.code_hash == code_hash) & model.used_at.is_null()
                    & (model.expires_at > now)).execute()
                row = model.get_or_none(model.code_hash == code_hash)
            if won and row is not None:
                return MailLink(visitor_id=row.visitor_id, conversation_id=row.conversation_id)
            return refusal(found=row is not None, used_at=row.used_at if row else None,
                           expires_at=row.expires_at if row else 0.0, now=now)

        return await self._db.run(work)

    async def erase(self, visitor_id: str) -> int:
        """A contact's erasure: every link of theirs stops working."""

        def work() -> int:
            model, main = self._model(), self._db.main
            with main.db.connection_context():
                return int(model.delete().where(model.visitor_id == visitor_id).execute())

        return await self._db.run(work)

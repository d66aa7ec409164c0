"""Attachments: who uploaded a file, what it is, and the one message it was sent with. The
bytes are not here (``tidedesk.blobs``); names are sealed like visitors' fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidedesk.storage.database import Database
from tidedesk.storage.records import Attachment

NAME_CONTEXT = "attachment.name"


class AttachmentInUse(Exception):
    """A file cannot go with this message; ``reason``: ``unknown``, ``not_yours``,
    ``used_elsewhere``."""

    def __init__(self, attachment_id: str, reason: str) -> None:
        super().__init__(f"{attachment_id}: {reason}")
        self.attachment_id = attachment_id
        self.reason = reason


class AttachmentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _record(self, row: Any) -> Attachment:
        cipher = self._db.cipher
        name = row.name
        if cipher is not None and cipher.looks_sealed(name):
            name = cipher.decrypt(name, NAME_CONTEXT) or "file"
        return Attachment(id=row.id, uploader=row.uploader, visitor_id=row.visitor_id,
                          conversation_id=row.conversation_id, message_id=row.message_id,
                          name=name, content_type=row.content_type, size=row.size,
                          etag=row.etag, thumbnail=bool(row.thumbnail),
                          created_at=row.created_at)

    async def create(self, *, id: str, uploader: str, visitor_id: str, name: str,
                     content_type: str, size: int, etag: str, thumbnail: bool) -> None:
        cipher = self._db.cipher
        stored = cipher.encrypt(name, NAME_CONTEXT) if cipher is not None else name

        def work() -> None:
            model = self._db.main["Attachment"]
            with self._db.main.db.connection_context():
                model.create(id=id, uploader=uploader, visitor_id=visitor_id, name=stored,
                             content_type=content_type, size=size, etag=etag,
                             thumbnail=thumbnail)

        await self._db.run(work)

    async def get(self, attachment_id: str) -> Attachment | None:
        def work() -> Attachment | None:
            model = self._db.main["Attachment"]
            with self._db.main.db.connection_context():
                row = model.get_or_none(model.id == attachment_id)
            return None if row is None else self._record(row)

        return await self._db.run(work)

    async def bind(self, ids: Sequence[str], *, uploader: str, conversation_id: str,
                   message_id: str, visitor_id: str) -> list[Attachment]:
        """Tie the files to one message, all or none, in the order given. A file already tied
        to this same message (a resend with the same client id) is fine; one of someone else,
        or tied to another message, raises :class:`AttachmentInUse`."""

        def work() -> list[Attachment]:
            model = self._db.main["Attachment"]
            db = self._db.main.db
            with db.connection_context(), db.atomic():
                out = []
                for att_id in ids:
                    claimed = model.update(conversation_id=conversation_id,
                                           message_id=message_id, visitor_id=visitor_id).where(
                        (model.id == att_id) & (model.uploader == uploader)
                        & model.conversation_id.is_null()).execute()
                    row = model.get_or_none(model.id == att_id)
                    if row is None:
                        raise AttachmentInUse(att_id, "unknown")
                    if row.uploader != uploader:
                        raise AttachmentInUse(att_id, "not_yours")
                    if not claimed and (row.conversation_id != conversation_id
                                        or row.message_id != message_id):
                        raise AttachmentInUse(att_id, "used_elsewhere")
                    out.append(self._record(row))
                return out

        return await self._db.run(work)

    async def take_for(self, *, conversation_id: str | None = None,
                       visitor_id: str | None = None) -> list[str]:
        """Delete the rows of a conversation's files (or of everything a visitor uploaded or
        was sent) and return their ids, whose bytes the caller then deletes."""

        def work() -> list[str]:
            model = self._db.main["Attachment"]
            if conversation_id is not None:
                where = model.conversation_id == conversation_id
            else:
                assert visitor_id is not None
                conv = self._db.main["Conversation"]
                where = ((model.visitor_id == visitor_id)
                         | (model.uploader == f"visitor:{visitor_id}")
                         | model.conversation_id.in_(
                             conv.select(conv.id).where(conv.visitor_id == visitor_id)))
            with self._db.main.db.connection_context(), self._db.main.db.atomic():
                ids = [r.id for r in model.select(model.id).where(where)]
                if ids:
                    model.delete().where(model.id.in_(ids)).execute()
            return ids

        return await self._db.run(work)

    async def take_unsent(self, cutoff: float, limit: int = 500) -> list[str]:
        """Delete the rows of files uploaded before ``cutoff`` and never sent, and return
        their ids (whose bytes the caller deletes). A file being sent at that moment is kept:
        only rows still unbound are deleted."""

        def work() -> list[str]:
            model = self._db.main["Attachment"]
            unsent = model.conversation_id.is_null() & (model.created_at < cutoff)
            with self._db.main.db.connection_context(), self._db.main.db.atomic():
                ids = [r.id for r in model.select(model.id).where(unsent).limit(limit)]
                if ids:
                    model.delete().where(model.id.in_(ids) & unsent).execute()
            return ids

        return await self._db.run(work)

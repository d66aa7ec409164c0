"""Labels on conversations (issue 14): set as a whole, read for a page of conversations."""

from __future__ import annotations

from collections.abc import Sequence

from tidedesk.storage.database import Database


class LabelRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set(self, conv_id: str, labels: Sequence[str]) -> list[str]:
        """Replace the conversation's labels; returns them sorted."""
        wanted = sorted(set(labels))

        def work() -> list[str]:
            main = self._db.main
            model = main["ConversationLabel"]
            with main.db.connection_context(), main.db.atomic():
                model.delete().where(model.conversation_id == conv_id).execute()
                if wanted:
                    model.insert_many([{"conversation_id": conv_id, "label": label}
                                       for label in wanted]).execute()
            return wanted

        return await self._db.run(work)

    async def of(self, conv_ids: Sequence[str]) -> dict[str, list[str]]:
        def work() -> dict[str, list[str]]:
            main = self._db.main
            model = main["ConversationLabel"]
            out: dict[str, list[str]] = {c: [] for c in conv_ids}
            if not conv_ids:
                return out
            with main.db.connection_context():
                for row in (model.select().where(model.conversation_id.in_(list(conv_ids)))
                            .order_by(model.label)):
                    out.setdefault(row.conversation_id, []).append(row.label)
            return out

        return await self._db.run(work)

    async def delete_conversations(self, conv_ids: Sequence[str]) -> None:
        """Erasure: the labels of these conversations go too."""

        def work() -> None:
            main = self._db.main
            model = main["ConversationLabel"]
            with main.db.connection_context():
                model.delete().where(model.conversation_id.in_(list(conv_ids))).execute()

        await self._db.run(work)

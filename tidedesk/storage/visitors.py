"""Visitors (contacts): name, e-mail and phone encrypted at rest, tags and locale."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tidedesk.storage.database import Database, new_id
from tidedesk.storage.records import Visitor
from tidedesk.storage.search import SearchRepository

# Associated data of each encrypted field (a value moved to another column does not decrypt).
VISITOR_FIELDS = {"name": "visitor.name", "email": "visitor.email", "phone": "visitor.phone"}
FIELDS_CONTEXT = "visitor.fields"


def _json_object(stored: str | None) -> dict[str, Any]:
    try:
        value = json.loads(stored) if stored else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class VisitorRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _seal(self, value: str | None, field: str) -> str | None:
        cipher = self._db.cipher
        if not value or cipher is None:
            return None
        return cipher.encrypt(value, VISITOR_FIELDS[field])

    def reindex_search_sync(self) -> int:
        """Make every contact's blinded search tokens again (contacts from before search, or
        from another key); returns how many changed."""
        changed = 0
        main = self._db.main
        model = main["Visitor"]
        with main.db.connection_context():
            for row in model.select():
                record = self._record(row)
                tokens = self._search_tokens(record.name if record else "",
                                             record.email if record else None)
                if tokens != (row.search_tokens or ""):
                    model.update(search_tokens=tokens).where(model.id == row.id).execute()
                    changed += 1
        return changed

    def _record(self, row: Any) -> Visitor | None:
        """The visitor with the plaintext of the encrypted fields."""
        if row is None:
            return None
        cipher = self._db.cipher
        plain: dict[str, str | None] = {}
        for field, context in VISITOR_FIELDS.items():
            stored = getattr(row, f"{field}_enc")
            value = cipher.decrypt(stored, context) if stored and cipher else None
            if value is None and field == "name":
                value = row.name  # schema 1, or stored without a cipher
            plain[field] = value or ("" if field == "name" else None)
        stored_fields = row.fields_enc
        if stored_fields and cipher is not None and cipher.looks_sealed(stored_fields):
            stored_fields = cipher.decrypt(stored_fields, FIELDS_CONTEXT)
        return Visitor(id=row.id, name=plain["name"] or "", email=plain["email"],
                       phone=plain["phone"], name_enc=row.name_enc, email_enc=row.email_enc,
                       phone_enc=row.phone_enc, tags=row.tags, locale=row.locale,
                       created_at=row.created_at, site=row.site, context=_json_object(row.context),
                       fields=_json_object(stored_fields), external_id=row.external_id)

    def _search_tokens(self, name: str | None, email: str | None) -> str:
        return SearchRepository(self._db).contact_search_tokens(name, email)

    async def create(self, *, name: str, email: str | None, tags: Sequence[str],
                     locale: str, phone: str | None = None, site: str = "default",
                     context: Mapping[str, Any] | None = None,
                     fields: Mapping[str, str] | None = None,
                     external_id: str | None = None) -> str:
        plain_name = "" if self._db.cipher is not None else name
        cipher = self._db.cipher
        fields_json = json.dumps(dict(fields or {}), ensure_ascii=False) if fields else None
        columns = {"name_enc": self._seal(name, "name"), "email_enc": self._seal(email, "email"),
                   "phone_enc": self._seal(phone, "phone"),
                   "search_tokens": self._search_tokens(name, email),
                   "context": json.dumps(dict(context), ensure_ascii=False) if context else None,
                   "fields_enc": (cipher.encrypt(fields_json, FIELDS_CONTEXT)
                                  if fields_json and cipher else fields_json),
                   "external_id": external_id}

        def work() -> str:
            visitor_id = new_id()
            main = self._db.main
            with main.db.connection_context():
                main["Visitor"].create(id=visitor_id, name=plain_name, tags=",".join(tags),
                                       locale=locale, site=site, **columns)
            return visitor_id

        return await self._db.run(work)

    async def update_contact(self, visitor_id: str, *, name: str | None = None,
                             email: str | None = None, phone: str | None = None) -> bool:
        """Set the fields given (encrypted like at creation); False for an unknown visitor."""
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name_enc"] = self._seal(name, "name")
            if self._db.cipher is None:
                fields["name"] = name
        if email is not None:
            fields["email_enc"] = self._seal(email, "email")
        if phone is not None:
            fields["phone_enc"] = self._seal(phone, "phone")
        if name is not None or email is not None:  # what contact search finds (issue 14)
            current = await self.get(visitor_id)
            if current is None:
                return False
            fields["search_tokens"] = self._search_tokens(
                name if name is not None else current.name,
                email if email is not None else current.email)

        def work() -> bool:
            main = self._db.main
            model = main["Visitor"]
            with main.db.connection_context():
                # (MySQL counts only changed rows: an unchanged update still found the visitor)
                if fields and model.update(**fields).where(model.id == visitor_id).execute():
                    return True
                return model.get_or_none(model.id == visitor_id) is not None

        found = await self._db.run(work)
        await self._db.visitors_changed([visitor_id])
        return found

    async def by_external_id(self, external_id: str) -> Visitor | None:
        """The contact an identify call made for this shop customer (the oldest, if several)."""

        def work() -> Visitor | None:
            main = self._db.main
            model = main["Visitor"]
            with main.db.connection_context():
                row = (model.select().where(model.external_id == external_id)
                       .order_by(model.created_at).first())
                return self._record(row)

        return await self._db.run(work)

    async def set_context(self, visitor_id: str, context: Mapping[str, Any]) -> None:
        """The latest context the widget sent (a returning contact on a new page or device)."""

        def work() -> None:
            main = self._db.main
            model = main["Visitor"]
            with main.db.connection_context():
                model.update(context=json.dumps(dict(context), ensure_ascii=False)).where(
                    model.id == visitor_id).execute()

        await self._db.run(work)
        await self._db.visitors_changed([visitor_id])

    async def get(self, visitor_id: str) -> Visitor | None:
        def work() -> Visitor | None:
            main = self._db.main
            model = main["Visitor"]
            with main.db.connection_context():
                return self._record(model.get_or_none(model.id == visitor_id))

        return await self._db.run(work)

    async def many(self, visitor_ids: Sequence[str]) -> dict[str, Visitor]:
        """Visitors by id, in one query."""

        def work() -> dict[str, Visitor]:
            main = self._db.main
            model = main["Visitor"]
            if not visitor_ids:
                return {}
            with main.db.connection_context():
                rows = model.select().where(model.id.in_(list(visitor_ids)))
                return {v.id: v for v in map(self._record, rows) if v is not None}

        return await self._db.run(work)

    async def erase(self, visitor_id: str) -> int:
        """Overwrite the visitor's personal data (name, e-mail, phone, tags); the row stays, so
        conversations still point at someone (reports). 1 if the visitor existed."""
        def work() -> int:
            main = self._db.main
            model = main["Visitor"]
            with main.db.connection_context():
                # (and what issue 14 keeps of them: search tokens, context, pre-chat fields,
                # the shop's customer id)
                return int(model.update(name="", name_enc=None, email_enc=None, phone_enc=None,
                                        tags="", search_tokens="", context=None,
                                        fields_enc=None, external_id=None)
                           .where(model.id == visitor_id).execute())

        erased = await self._db.run(work)
        await self._db.visitors_changed([visitor_id])
        return erased

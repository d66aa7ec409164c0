"""Key rotation: re-encrypt every sealed value with the cipher's current key."""

from __future__ import annotations

from typing import Any

from tidedesk.storage.agents import TOTP_CONTEXT
from tidedesk.storage.attachments import NAME_CONTEXT
from tidedesk.storage.database import Database
from tidedesk.storage.messages import ATTACHMENTS_CONTEXT, BODY_CONTEXT
from tidedesk.storage.search import SearchRepository
from tidedesk.storage.visitors import VISITOR_FIELDS


def rotate_key(db: Database, batch: int = 500) -> dict[str, int]:
    """Re-encrypt with the cipher's current key every value made with another key, encrypt
    names and TOTP seeds still in the clear, and (with ``encrypt_bodies``) bodies still in
    the clear.
    Returns how many values changed, by kind. Safe to run again or to interrupt."""
    if db.cipher is None:
        raise ValueError("rotate-key needs a cipher")
    cipher = db.cipher
    counts = {"visitor_fields": 0, "agent_secrets": 0, "message_bodies": 0,
              "attachment_fields": 0}

    def reseal(stored: str | None, context: str) -> str | None:
        if not stored or not cipher.needs_rotation(stored):
            return None
        plain = cipher.decrypt(stored, context)
        if plain is None:
            raise ValueError(f"a {context} value was made with a key that is neither "
                             "TIDEDESK_AES_KEY nor in TIDEDESK_AES_PREVIOUS_KEYS")
        return cipher.encrypt(plain, context)

    def _plain(stored: str | None, field: str) -> str | None:
        return cipher.decrypt(stored, VISITOR_FIELDS[field]) if stored else None

    search = SearchRepository(db)
    visitor = db.main["Visitor"]
    with db.main.db.connection_context():
        last = ""
        while True:
            rows = list(visitor.select().where(visitor.id > last)
                        .order_by(visitor.id).limit(batch))
            if not rows:
                break
            last = rows[-1].id
            with db.main.db.atomic():
                for row in rows:
                    changes: dict[str, Any] = {}
                    for field, context in VISITOR_FIELDS.items():
                        new = reseal(getattr(row, f"{field}_enc"), context)
                        if new is not None:
                            changes[f"{field}_enc"] = new
                    if row.name and not row.name_enc:
                        changes.update(name="", name_enc=cipher.encrypt(row.name,
                                                                        VISITOR_FIELDS["name"]))
                    # issue 14: the blinded search tokens follow the current key.
                    tokens = search.contact_search_tokens(
                        _plain(row.name_enc, "name") or row.name, _plain(row.email_enc, "email"))
                    if tokens != (row.search_tokens or ""):
                        visitor.update(search_tokens=tokens).where(visitor.id == row.id).execute()
                    if changes:
                        counts["visitor_fields"] += len(changes) - ("name" in changes)
                        visitor.update(**changes).where(visitor.id == row.id).execute()
    agent = db.main["Agent"]
    with db.main.db.connection_context(), db.main.db.atomic():
        for row in agent.select():
            stored = row.totp_secret_enc
            new = reseal(stored, TOTP_CONTEXT)
            if new is None and row.totp_secret and not stored:
                new = cipher.encrypt(row.totp_secret, TOTP_CONTEXT)
            if new is not None:
                counts["agent_secrets"] += 1
                agent.update(totp_secret=None, totp_secret_enc=new).where(
                    agent.id == row.id).execute()
    # issue 15: attachment names, and messages' attachment lists (the bytes themselves stay
    # sealed with the key that wrote them: keep it in TIDEDESK_AES_PREVIOUS_KEYS).
    attachment = db.main["Attachment"]
    with db.main.db.connection_context(), db.main.db.atomic():
        for row in attachment.select(attachment.id, attachment.name):
            new = reseal(row.name, NAME_CONTEXT) if cipher.looks_sealed(row.name) else None
            if new is not None:
                counts["attachment_fields"] += 1
                attachment.update(name=new).where(attachment.id == row.id).execute()
    for shard in db.shards:
        msg = shard["Message"]
        with shard.db.connection_context(), shard.db.atomic():
            for row in msg.select(msg.id, msg.attachments).where(msg.attachments.is_null(False)):
                sealed = cipher.looks_sealed(row.attachments)
                new = reseal(row.attachments, ATTACHMENTS_CONTEXT) if sealed else None
                if new is not None:
                    counts["attachment_fields"] += 1
                    msg.update(attachments=new).where(msg.id == row.id).execute()
    for shard in db.shards:
        msg = shard["Message"]
        with shard.db.connection_context():
            last_id = 0
            while True:
                rows = list(msg.select(msg.id, msg.body).where(msg.id > last_id)
                            .order_by(msg.id).limit(batch))
                if not rows:
                    break
                last_id = rows[-1].id
                with shard.db.atomic():
                    for row in rows:
                        plain = cipher.decrypt(row.body, BODY_CONTEXT)
                        if plain is not None:
                            new = (cipher.encrypt(plain, BODY_CONTEXT)
                                   if cipher.needs_rotation(row.body) else None)
                        elif cipher.looks_sealed(row.body):
                            # Encrypting it again would lose it behind two keys.
                            raise ValueError("a message body was made with a key that is "
                                             "neither TIDEDESK_AES_KEY nor in "
                                             "TIDEDESK_AES_PREVIOUS_KEYS")
                        elif db.encrypt_bodies:
                            new = cipher.encrypt(row.body, BODY_CONTEXT)
                        else:
                            new = None
                        if new is not None:
                            counts["message_bodies"] += 1
                            # issue 14: an encrypted body is not indexed (the index would keep
                            # the text in the clear)
                            extra = {"search_text": ""} if db.encrypt_bodies else {}
                            msg.update(body=new, **extra).where(msg.id == row.id).execute()
    return counts

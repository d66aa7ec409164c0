"""A contact's data on request (issue 18): export it as JSON, erase it, and the retention job.

Erasure is a list of named steps (:attr:`Privacy.steps`), each removing or overwriting one kind
of trace of the contact, so the parts other modules own add theirs with :meth:`add_step`: the
search index (issue 14) and the attachment files (issue 15). The conversation skeleton stays
(ids, pool, agent, state, times, message seqs and senders) for reports; the erasure is audited
with the count of each step, never with what was erased."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chatnode.errors import ServiceError
from tidedesk.auth import Principal
from tidedesk.storage import Storage
from tidedesk.store import Store


@dataclass(frozen=True)
class Subject:
    """Whose data a step erases: the visitor and all their conversations' ids."""

    visitor_id: str
    conversation_ids: tuple[str, ...]


# A step returns how many things it erased (rows, keys, files), for the audit entry.
ErasureStep = Callable[[Subject], Awaitable[int]]


class Privacy:
    def __init__(self, *, storage: Storage, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.store = store
        self.clock = clock
        self.steps: list[tuple[str, ErasureStep]] = [
            ("message_bodies", self._erase_bodies),
            ("recent_history", self._erase_history),
            ("contact_fields", self._erase_contact),
            # the one-time links of mails already sent stop opening the chat
            ("mail_links", lambda subject: storage.mail_links.erase(subject.visitor_id)),
        ]

    def add_step(self, name: str, step: ErasureStep) -> None:
        """One more kind of trace to erase (runs after the built-in steps, in order added)."""
        self.steps.append((name, step))

    async def _subject(self, visitor_id: str) -> Subject:
        if await self.storage.visitors.get(visitor_id) is None:
            raise ServiceError(404, "not_found", f"no contact {visitor_id!r}")
        conversations = await self.storage.conversations.for_visitor(visitor_id)
        return Subject(visitor_id, tuple(c.id for c in conversations))

    async def _erase_bodies(self, subject: Subject) -> int:
        return await self.storage.messages.erase(subject.conversation_ids)

    async def _erase_history(self, subject: Subject) -> int:
        for conv_id in subject.conversation_ids:
            await self.store.history_delete(conv_id)
        return len(subject.conversation_ids)

    async def _erase_contact(self, subject: Subject) -> int:
        return await self.storage.visitors.erase(subject.visitor_id)

    async def erase(self, principal: Principal, visitor_id: str) -> dict[str, Any]:
        """Run every step; audited as ``contact.erased`` with the counts. Running it again is
        harmless (the steps find nothing left), so a step that failed is retried by repeating
        the request."""
        subject = await self._subject(visitor_id)
        counts: dict[str, int] = {}
        for name, step in self.steps:
            counts[name] = await step(subject)
        await self.storage.audit.record(f"agent:{principal.id}", "contact.erased", visitor_id,
                                        {"conversations": len(subject.conversation_ids),
                                         **counts})
        return {"erased": visitor_id, "conversations": len(subject.conversation_ids),
                "steps": counts}

    async def export(self, principal: Principal, visitor_id: str) -> dict[str, Any]:
        """Everything stored about a contact, as one JSON document (audited)."""
        subject = await self._subject(visitor_id)
        visitor = await self.storage.visitors.get(visitor_id)
        assert visitor is not None
        conversations = []
        for conv in await self.storage.conversations.for_visitor(visitor_id):
            messages: list[dict[str, Any]] = []
            after = 0
            while True:
                page = await self.storage.messages.page(conv.id, after_seq=after, limit=500)
                messages += [{"seq": m.seq, "from": m.from_, "body": m.body, "ts": m.ts}
                             for m in page]
                if len(page) < 500:
                    break
                after = page[-1].seq
            conversations.append({"id": conv.id, "state": conv.state, "pool": conv.pool,
                                  "created_at": conv.created_at, "updated_at": conv.updated_at,
                                  "messages": messages})
        await self.storage.audit.record(f"agent:{principal.id}", "contact.exported", visitor_id,
                                        {"conversations": len(subject.conversation_ids)})
        return {"contact": {"id": visitor.id, "name": visitor.name, "email": visitor.email,
                            "phone": visitor.phone, "tags": list(visitor.tag_list),
                            "locale": visitor.locale, "created_at": visitor.created_at},
                "conversations": conversations, "exported_at": self.clock()}

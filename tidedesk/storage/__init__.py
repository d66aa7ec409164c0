"""History and directory storage: one repository per aggregate behind the :class:`Storage`
façade the roles receive.

- ``storage.agents`` (:mod:`.agents`), ``storage.visitors`` (:mod:`.visitors`),
  ``storage.conversations`` (:mod:`.conversations`), ``storage.messages`` (:mod:`.messages`),
  ``storage.tickets``, ``storage.canned``, ``storage.audit``, ``storage.sign_ins``,
  ``storage.mail`` (the mail outbox), ``storage.ratings``, ``storage.attachments``,
  ``storage.api_tokens``, ``storage.webhooks`` (deliveries too), ``storage.sites``;
- every repository returns frozen records (:mod:`.records`) or, for history, message frames
  (:class:`tidedesk.frames.MessageFrame`), never peewee rows;
- they share one :class:`~.database.Database`: the shards, the thread pool, the circuit breaker
  and the cipher. The SQL lives in the repositories; the models in :mod:`tidedesk.models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tidedesk.crypto import FieldCipher
from tidedesk.models import Shard
from tidedesk.storage.agents import AgentRepository
from tidedesk.storage.api_tokens import ApiTokenRepository
from tidedesk.storage.attachments import AttachmentRepository
from tidedesk.storage.audit import AuditRepository
from tidedesk.storage.canned import CannedRepository
from tidedesk.storage.conversations import ConversationRepository
from tidedesk.storage.database import MAX_PAGE, Database, new_id
from tidedesk.storage.labels import LabelRepository
from tidedesk.storage.mail import MailRepository
from tidedesk.storage.mail_links import MailLinkRepository
from tidedesk.storage.messages import MessageRepository
from tidedesk.storage.ratings import RatingRepository
from tidedesk.storage.reports import ReportRepository
from tidedesk.storage.rotation import rotate_key
from tidedesk.storage.search import SearchRepository
from tidedesk.storage.sign_ins import SignInRepository
from tidedesk.storage.sites import SiteRepository
from tidedesk.storage.tickets import TicketRepository
from tidedesk.storage.visitors import VisitorRepository
from tidedesk.storage.webhooks import WebhookRepository

__all__ = ["MAX_PAGE", "Storage", "new_id"]

T = TypeVar("T")


class Storage:
    """``cipher``: visitors' name, e-mail and phone are stored encrypted with it (and message
    bodies too with ``encrypt_bodies``); records read back carry the plaintext in ``name``,
    ``email`` and ``phone``. Without one, names are stored in the clear (tools, benchmarks)."""

    def __init__(self, urls: Sequence[str], pool_size: int = 4, *,
                 cipher: FieldCipher | None = None, encrypt_bodies: bool = False) -> None:
        self.database = Database(urls, pool_size, cipher=cipher, encrypt_bodies=encrypt_bodies)
        self.agents = AgentRepository(self.database)
        self.visitors = VisitorRepository(self.database)
        self.conversations = ConversationRepository(self.database)
        self.messages = MessageRepository(self.database)
        self.tickets = TicketRepository(self.database)
        self.canned = CannedRepository(self.database)
        self.audit = AuditRepository(self.database)
        self.sign_ins = SignInRepository(self.database)
        self.mail = MailRepository(self.database)  # issue 13: the mail outbox
        self.mail_links = MailLinkRepository(self.database)  # reply mails' one-time links
        self.ratings = RatingRepository(self.database)  # issue 13
        self.attachments = AttachmentRepository(self.database)
        self.api_tokens = ApiTokenRepository(self.database)
        self.webhooks = WebhookRepository(self.database)
        self.sites = SiteRepository(self.database)
        self.search = SearchRepository(self.database)  # issue 14
        self.labels = LabelRepository(self.database)  # issue 14
        self.reports = ReportRepository(self.database)  # issue 14

    @property
    def cipher(self) -> FieldCipher | None:
        return self.database.cipher

    @property
    def shards(self) -> list[Shard]:
        return self.database.shards

    @property
    def main(self) -> Shard:
        return self.database.main

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function in the database pool, behind the circuit breaker; raises
        :class:`~tidedesk.errors.StorageUnavailable` when the database is down."""
        return await self.database.run(fn, *args)

    @property
    def available(self) -> bool:
        return self.database.available

    def shard_for(self, conv_id: str) -> Shard:
        return self.database.shard_for(conv_id)

    def migrate_all(self) -> int:
        return self.database.migrate_all()

    def close(self) -> None:
        self.database.close()

    def rotate_key_sync(self, batch: int = 500) -> dict[str, int]:
        """Re-encrypt with the cipher's current key every value made with another key, encrypt
        names and TOTP seeds still in the clear, and (with ``encrypt_bodies``) bodies still in
        the clear. Returns how many values changed, by kind. Safe to run again or to
        interrupt."""
        return rotate_key(self.database, batch)

    def reindex_search_sync(self) -> dict[str, int]:
        """Index for search what was stored before it existed (``tidedesk admin
        reindex-search``): messages without an index entry, and every contact's tokens."""
        counts = self.search.reindex_messages_sync()
        counts["contacts"] = self.visitors.reindex_search_sync()
        return counts

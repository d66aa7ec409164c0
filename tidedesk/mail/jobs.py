"""The mail jobs of one process, from the settings: the outbox sender when
``TIDEDESK_SMTP_URL`` is set, the IMAP poller when ``TIDEDESK_IMAP_URL`` is too. Every chat
node runs them (claims are atomic and incoming mail is idempotent, so several may)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tidedesk.mail.addresses import parse_imap_url, parse_smtp_url
from tidedesk.mail.links import mail_link
from tidedesk.mail.outbox import OutboxSender
from tidedesk.mail.poller import ImapPoller, Post
from tidedesk.mail.retry import RetryPolicy
from tidedesk.settings import Settings
from tidedesk.storage import Storage
from tidedesk.store import Store


def chat_link(settings: Settings) -> Callable[[str], str]:
    """The link a mail carries, from its one-time code: the widget's page with
    ``#tidedesk-code=<code>`` (tidedesk/mail/links.py), which the widget trades for the
    visitor's session once."""
    base = settings.mail_link_url or f"http://{settings.host}:{settings.port}/demo"
    return lambda code: mail_link(base, code)


class MailJobs:
    def __init__(self, *, settings: Settings, storage: Storage, store: Store,
                 post: Post, clock: Callable[[], float] = time.time,
                 retry: RetryPolicy | None = None) -> None:
        self.sender: OutboxSender | None = None
        self.poller: ImapPoller | None = None
        if settings.smtp_url is not None and settings.mail_from is not None:
            self.sender = OutboxSender(
                storage=storage, store=store, smtp=parse_smtp_url(settings.smtp_url),
                mail_from=settings.mail_from, token_secret=settings.jwt_secret,
                link_for=chat_link(settings), worker=settings.node_id, retry=retry,
                poll_s=settings.mail_poll_s, clock=clock)
        if settings.imap_url is not None:
            self.poller = ImapPoller(
                imap=parse_imap_url(settings.imap_url), storage=storage, post=post,
                token_secret=settings.jwt_secret, max_chars=settings.max_body_chars,
                poll_s=settings.imap_poll_s, clock=clock)

    def start(self) -> None:
        for job in (self.sender, self.poller):
            if job is not None:
                job.start()

    async def stop(self) -> None:
        for job in (self.sender, self.poller):
            if job is not None:
                await job.stop()

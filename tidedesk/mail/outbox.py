"""The outbox sender: sends what the mail outbox holds, with retries, off the chat path.

A periodic job claims due rows (``tidedesk.storage.mail``: atomic claims, so any number of
senders may run, one per chat node), builds each mail (``tidedesk.mail.compose``) and hands it
to the SMTP server in a worker thread with a timeout. A failure is retried on the schedule of
``tidedesk.mail.retry`` and, once that is spent, kept as ``dead`` with its last error; an
address the server refuses for good (5xx) is dead at once. A mail server that is down holds
mail back and loses none; no chat waits for it.

A ``reply`` row carries the agent replies the visitor has not had: the public agent messages
after the last reply mail of the conversation. It is skipped when the visitor gave no address,
is connected again by the time it is due (the widget showed the replies), or nothing is new.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage

from tidedesk import metrics
from tidedesk.frames import MessageFrame
from tidedesk.mail.addresses import SmtpTarget, parse_from_address
from tidedesk.mail.compose import Envelope, Line, message_id, reply_mail, transcript_mail
from tidedesk.mail.retry import RetryPolicy
from tidedesk.mail.tokens import sign_reply_token
from tidedesk.storage import Storage
from tidedesk.storage.mail import OutboxItem
from tidedesk.store import Store

log = logging.getLogger(__name__)

# How often the outbox is looked at; with REPLY_MAIL_DELAY_SECS it bounds how late a mail is.
OUTBOX_POLL_SECS = 5.0
# A sender holds a claimed row this long; one that died is replaced after it.
LEASE_SECS = 120.0
# One SMTP conversation may take this long (connect, TLS, send) before it counts as failed.
SMTP_TIMEOUT_SECS = 20.0
# A transcript holds at most this many messages (pages of the history read).
TRANSCRIPT_MAX_MESSAGES = 5000


class OutboxSender:
    def __init__(self, *, storage: Storage, store: Store, smtp: SmtpTarget, mail_from: str,
                 token_secret: str, link_for: Callable[[str], str], worker: str,
                 retry: RetryPolicy | None = None, poll_s: float = OUTBOX_POLL_SECS,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.store = store
        self.smtp = smtp
        self.from_name, self.from_address = parse_from_address(mail_from)
        self.shop = self.from_name or self.from_address.rsplit("@", 1)[-1]
        self.token_secret = token_secret
        self.link_for = link_for
        self.worker = worker
        self.retry = retry or RetryPolicy()
        self.poll_s = poll_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the database is down, say: the next round retries
                log.warning("mail outbox round failed; next one retries",
                            extra={"error": str(exc)})
            await asyncio.sleep(self.poll_s)

    async def run_once(self) -> int:
        """Send every due row once; returns how many were handled."""
        items = await self.storage.mail.claim_due(self.clock(), lease_s=LEASE_SECS,
                                                  worker=self.worker)
        for item in items:
            await self._handle(item)
        return len(items)

    async def _handle(self, item: OutboxItem) -> None:
        now = self.clock()
        built = await (self._reply(item, now) if item.kind == "reply"
                       else self._transcript(item, now))
        if built is None:
            return
        msg, to, upto = built
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._send, msg, to)
        except smtplib.SMTPRecipientsRefused as exc:
            metrics.MAIL_FAILURES.labels(kind=item.kind, outcome="dead").inc()
            log.warning("mail refused for good by the server",
                        extra={"outbox_id": item.id, "error": str(exc)})
            await self.storage.mail.finish(item, "dead", error=str(exc), now=now)
            return
        except (smtplib.SMTPException, OSError) as exc:
            attempts = item.attempts + 1
            due = self.retry.next_try(attempts, now)
            outcome = "retry" if due is not None else "dead"
            metrics.MAIL_FAILURES.labels(kind=item.kind, outcome=outcome).inc()
            log.warning("mail not sent", extra={"outbox_id": item.id, "attempts": attempts,
                                                "error": str(exc), "server": self.smtp.describe(),
                                                "next_try_in_s": None if due is None
                                                else round(due - now, 1)})
            if due is None:
                await self.storage.mail.finish(item, "dead", error=str(exc), now=now)
            else:
                await self.storage.mail.retry(item, due_at=due, error=str(exc))
            return
        metrics.MAIL_SENT.labels(kind=item.kind).inc()
        log.info("mail sent", extra={"outbox_id": item.id, "kind": item.kind,
                                     "conversation_id": item.conversation_id})
        await self.storage.mail.finish(item, "sent", upto_seq=upto,
                                       message_id=msg["Message-ID"].strip("<>"), now=now)

    async def _envelope(self, item: OutboxItem, to: str, token: str | None) -> Envelope:
        previous = await self.storage.mail.sent_message_ids(item.conversation_id)
        return Envelope(from_name=self.from_name, from_address=self.from_address, to=to,
                        message_id=message_id(item.kind, item.id, token, self.from_address),
                        in_reply_to=previous[-1] if previous else None,
                        references=tuple(previous), reply_token=token)

    async def _reply(self, item: OutboxItem,
                     now: float) -> tuple[EmailMessage, str, int] | None:
        visitor = await self.storage.visitors.get(item.visitor_id)
        after = await self.storage.mail.last_mailed_seq(item.conversation_id)
        if visitor is None or not visitor.email:
            await self.storage.mail.finish(item, "skipped", upto_seq=item.last_reply_seq,
                                           error="the visitor gave no e-mail address", now=now)
            return None
        if await self.store.presence_nodes(f"visitor:{item.visitor_id}", now):
            await self.storage.mail.finish(item, "skipped", upto_seq=item.last_reply_seq,
                                           error="the visitor is connected again", now=now)
            return None
        new = [m for m in await self.storage.messages.page(item.conversation_id,
                                                           after_seq=after, limit=500)
               if m.from_ == "agent" and not m.private]
        if not new:
            await self.storage.mail.finish(item, "skipped", upto_seq=item.last_reply_seq,
                                           error="nothing new to mail", now=now)
            return None
        # The token's clock is the row's, so every retry sends the same Message-ID.
        token = sign_reply_token(self.token_secret, item.conversation_id, item.created_at)
        env = await self._envelope(item, visitor.email, token)
        msg = reply_mail(env, shop=self.shop, locale=visitor.locale, lines=_lines(new),
                         link=self.link_for(await self.storage.mail_links.issue(
                             item.visitor_id, item.conversation_id, now)), now=now)
        return msg, visitor.email, max(m.seq for m in new)

    async def _transcript(self, item: OutboxItem,
                          now: float) -> tuple[EmailMessage, str, int] | None:
        visitor = await self.storage.visitors.get(item.visitor_id)
        if not item.to:
            await self.storage.mail.finish(item, "dead", error="no address", now=now)
            return None
        messages: list[MessageFrame] = []
        after = 0
        while len(messages) < TRANSCRIPT_MAX_MESSAGES:
            page = await self.storage.messages.page(item.conversation_id, after_seq=after,
                                                    limit=500)
            if not page:
                break
            messages += [m for m in page if not m.private]
            after = page[-1].seq
        token = sign_reply_token(self.token_secret, item.conversation_id, item.created_at)
        env = await self._envelope(item, item.to, token)
        msg = transcript_mail(env, shop=self.shop, locale=visitor.locale if visitor else "en",
                              lines=_lines(messages), now=now)
        return msg, item.to, 0

    def _send(self, msg: EmailMessage, to: str) -> None:
        """One SMTP conversation (in a worker thread)."""
        target = self.smtp
        smtp: smtplib.SMTP
        if target.tls:
            smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=SMTP_TIMEOUT_SECS,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(target.host, target.port, timeout=SMTP_TIMEOUT_SECS)
        with smtp:
            if target.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if target.user is not None:
                smtp.login(target.user, target.password or "")
            smtp.send_message(msg, from_addr=self.from_address, to_addrs=[to])


def _lines(messages: list[MessageFrame]) -> list[Line]:
    return [Line(sender=m.from_, name=m.name, body=m.body, ts=m.ts) for m in messages]

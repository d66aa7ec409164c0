"""The IMAP poller: visitors' e-mail replies become visitor messages of their conversation.

Every ``poll_s`` it reads the unseen mail of the shop's mailbox (``imapclient``, in a worker
thread), and for each one:

1. refuses it when the server says it is larger than ``MAX_MAIL_BYTES`` (never downloaded), or
   when ``tidedesk.mail.incoming`` cannot read a reply out of it (no text part, broken
   encoding, an auto-reply, nothing above the quote);
2. finds the reply token (threading headers, then the plus-address) and verifies it;
   a mail without a valid token, or whose conversation is gone, goes nowhere;
3. hands the text to ``post`` (the chat node's normal, durable message path) with a client id
   made from the Message-ID, so reading the same mail again stores it once.

Then it marks the mail with the keyword ``$TidedeskRead`` (its own flag, so the ``\\Seen`` a
person in the same mailbox relies on is left alone; on a server that takes no keywords it sets
``\\Seen`` instead and reads only unseen mail). A refused or unmatched mail is logged and counted
(``tidedesk_mail_incoming_total{outcome}``) and marked too, so it is not read again; a mail
whose ``post`` failed (a backend down) stays unmarked and is tried on the next round. No mail,
however broken, stops the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from imapclient import IMAPClient

from tidedesk import metrics
from tidedesk.mail.addresses import ImapTarget
from tidedesk.mail.incoming import MAX_MAIL_BYTES, Refused, read_reply
from tidedesk.mail.tokens import verify_reply_token
from tidedesk.storage import Storage

log = logging.getLogger(__name__)

# How often the mailbox is read; a visitor's answer shows in the console this long after the
# mail server got it, at most.
IMAP_POLL_SECS = 15.0
# One round (connect, search, fetch) may take this long before the connection is dropped.
IMAP_TIMEOUT_SECS = 30.0
# Mails read per round; the rest wait for the next one.
IMAP_BATCH = 50
# The keyword that marks a mail as handled by Tidedesk.
READ_KEYWORD = b"$TidedeskRead"
SEEN = b"\\Seen"

# conversation id, visitor id, client id, body -> the message is durable
Post = Callable[[str, str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Fetched:
    uid: int
    size: int
    raw: bytes | None  # None when too large to fetch


def client_id_for(message_id: str, raw: bytes) -> str:
    """The message's client id: the same mail always gets the same one (a 64-bit-safe hash of
    its Message-ID, or of its bytes when it has none)."""
    key = message_id.encode() if message_id else raw
    return "mail." + hashlib.sha256(key).hexdigest()[:40]


class ImapPoller:
    def __init__(self, *, imap: ImapTarget, storage: Storage, post: Post, token_secret: str,
                 max_chars: int, poll_s: float = IMAP_POLL_SECS,
                 clock: Callable[[], float] = time.time) -> None:
        self.imap = imap
        self.storage = storage
        self.post = post
        self.token_secret = token_secret
        self.max_chars = max_chars
        self.poll_s = poll_s
        self.clock = clock
        self.rounds = 0  # finished rounds (tests and logs)
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
            except Exception as exc:  # the mail server is down, say: the next round retries
                log.warning("mailbox round failed; next one retries",
                            extra={"error": str(exc), "server": self.imap.describe()})
            self.rounds += 1
            await asyncio.sleep(self.poll_s)

    def _connect(self) -> tuple[IMAPClient, bytes]:
        """A logged-in client with the mailbox selected, and the flag that marks a mail read."""
        target = self.imap
        client = IMAPClient(target.host, port=target.port, ssl=target.tls,
                            ssl_context=ssl.create_default_context() if target.tls else None,
                            timeout=IMAP_TIMEOUT_SECS)
        client.login(target.user, target.password)
        selected = client.select_folder(target.mailbox)
        keywords = b"\\*" in selected.get(b"PERMANENTFLAGS", ())
        return client, READ_KEYWORD if keywords else SEEN

    def _fetch(self) -> list[Fetched]:
        client, mark = self._connect()
        try:
            unread = ["UNKEYWORD", READ_KEYWORD] if mark == READ_KEYWORD else ["UNSEEN"]
            uids = sorted(client.search(unread))[:IMAP_BATCH]
            if not uids:
                return []
            sizes = {uid: int(data.get(b"RFC822.SIZE", 0))
                     for uid, data in client.fetch(uids, ["RFC822.SIZE"]).items()}
            small = [uid for uid in uids if sizes.get(uid, 0) <= MAX_MAIL_BYTES]
            bodies = ({uid: data.get(b"BODY[]") for uid, data in
                       client.fetch(small, ["BODY.PEEK[]"]).items()} if small else {})
            return [Fetched(uid, sizes.get(uid, 0), bodies.get(uid) if uid in small else None)
                    for uid in uids]
        finally:
            try:
                client.logout()
            except Exception:  # already gone; nothing to close
                log.debug("IMAP logout failed")

    def _mark_seen(self, uids: list[int]) -> None:
        client, mark = self._connect()
        try:
            client.add_flags(uids, [mark])
        finally:
            client.logout()

    async def run_once(self) -> int:
        """Read the unseen mail once; returns how many mails were looked at."""
        loop = asyncio.get_running_loop()
        fetched = await loop.run_in_executor(None, self._fetch)
        done = []
        for mail in fetched:
            try:
                outcome = await self._one(mail)
            except Exception as exc:  # a backend down: the mail stays unseen, retried later
                log.warning("mail reply not stored; retried next round",
                            extra={"uid": mail.uid, "error": str(exc)})
                continue
            metrics.MAIL_INCOMING.labels(outcome=outcome).inc()
            done.append(mail.uid)
        if done:
            await loop.run_in_executor(None, self._mark_seen, done)
        return len(fetched)

    async def _one(self, mail: Fetched) -> str:
        """What became of one mail (the metric's outcome); raises only when posting failed."""
        if mail.raw is None:
            log.warning("mail refused", extra={"uid": mail.uid, "reason": "too_large",
                                               "size": mail.size})
            return "too_large"
        try:
            reply = read_reply(mail.raw, self.max_chars)
        except Refused as exc:
            log.warning("mail refused", extra={"uid": mail.uid, "reason": exc.reason,
                                               "detail": str(exc)})
            return exc.reason
        now = self.clock()
        token = next((t for t in (verify_reply_token(self.token_secret, candidate, now)
                                  for candidate in reply.tokens) if t is not None), None)
        if token is None:
            outcome = "bad_token" if reply.tokens else "no_match"
            log.warning("mail matches no conversation", extra={
                "uid": mail.uid, "reason": outcome, "message_id": reply.message_id})
            return outcome
        conv = await self.storage.conversations.get(token.conversation_id)
        if conv is None:
            log.warning("mail matches no conversation", extra={
                "uid": mail.uid, "reason": "no_match", "message_id": reply.message_id})
            return "no_match"
        client_id = client_id_for(reply.message_id, mail.raw)
        await self.post(conv.id, conv.visitor_id, client_id, reply.text)
        log.info("mail reply stored", extra={"uid": mail.uid, "conversation_id": conv.id,
                                             "client_id": client_id})
        return "accepted"

"""The mail outbox table on both databases: claims are atomic across senders (two storages
stand for two chat nodes), a pending reply row absorbs later replies, finishing it starts a
new one when a reply came in meanwhile, and a transcript's address is stored encrypted."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mariadb import databases
from tidedesk.crypto import FieldCipher
from tidedesk.mail.links import LINK_CODE_KEEP_SECS, LINK_CODE_TTL_SECS
from tidedesk.storage import Storage, new_id

CIPHER = FieldCipher(base64.b64encode(os.urandom(32)).decode())


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / 'outbox.sqlite3'}"]
    else:
        with databases(1) as made:
            yield made


def test_claims_are_atomic_and_replies_share_a_row(urls: list[str]) -> None:
    first, second = Storage(urls, cipher=CIPHER), Storage(urls, cipher=CIPHER)
    try:
        first.migrate_all()

        async def scenario() -> None:
            conv, visitor = new_id(), new_id()
            await first.mail.note_reply(conv, visitor, 3, due_at=100.0)
            await second.mail.note_reply(conv, visitor, 5, due_at=200.0)  # shares the row
            [row] = await first.mail.items(conv)
            assert (row.status, row.last_reply_seq, row.due_at) == ("pending", 5, 100.0)
            assert await first.mail.claim_due(50.0, lease_s=10, worker="a") == []  # not due

            # Two senders race for the row many times over: exactly one wins each time.
            wins = await asyncio.gather(*(s.mail.claim_due(150.0 + i, lease_s=1000, worker=w)
                                          for i in range(5)
                                          for s, w in ((first, "a"), (second, "b"))))
            assert sum(len(w) for w in wins) == 1
            [claimed] = [w[0] for w in wins if w]

            # A reply arrives while the mail is being sent; the mail carried seq 5 only.
            await second.mail.note_reply(conv, visitor, 8, due_at=300.0)
            await first.mail.finish(claimed, "sent", upto_seq=5, message_id="m1@x", now=160.0)
            rows = await first.mail.items(conv)
            assert [(r.status, r.last_reply_seq) for r in rows] == [("sent", 8), ("pending", 8)]
            assert rows[1].due_at == 160.0  # at once: the reply already waited
            assert await first.mail.last_mailed_seq(conv) == 5
            assert await first.mail.sent_message_ids(conv) == ["m1@x"]

            # A failed attempt gives the row back with its next time.
            [again] = await second.mail.claim_due(170.0, lease_s=1000, worker="b")
            await second.mail.retry(again, due_at=400.0, error="connection refused")
            [pending] = [r for r in await first.mail.items(conv) if r.status == "pending"]
            assert (pending.attempts, pending.due_at, pending.last_error) == (
                1, 400.0, "connection refused")

            # A lease that ran out (the sender died) lets another sender take the row.
            [taken] = await first.mail.claim_due(400.0, lease_s=5, worker="a")
            assert await second.mail.claim_due(403.0, lease_s=5, worker="b") == []
            assert [r.id for r in await second.mail.claim_due(406.0, lease_s=5,
                                                              worker="b")] == [taken.id]

            tid = await first.mail.queue_transcript(conv, visitor, "ann@example.com", 10.0)
            [t] = [r for r in await second.mail.items(conv) if r.id == tid]
            assert t.to == "ann@example.com" and t.kind == "transcript"
            assert await first.mail.transcripts_for(conv) == 1

            # Ratings: once per conversation.
            rating = await first.ratings.add(conv_id=conv, visitor_id=visitor, agent_id="7",
                                             score=5, comment="great", now=1.0)
            assert rating is not None and rating.score == 5
            assert await second.ratings.add(conv_id=conv, visitor_id=visitor, agent_id="7",
                                            score=1, comment="", now=2.0) is None
            average, count, recent = await first.ratings.recent()
            assert (average, count, [r.comment for r in recent]) == (5.0, 1, ["great"])

        async def racing_routers() -> None:
            # Routers noting replies of one conversation at once: one pending row, newest seq.
            conv = new_id()
            await asyncio.gather(*(s.mail.note_reply(conv, "v", seq, due_at=1.0)
                                   for seq in range(1, 21)
                                   for s in ((first, second)[seq % 2],)))
            rows = await first.mail.items(conv)
            assert [(r.status, r.last_reply_seq) for r in rows] == [("pending", 20)]

        asyncio.run(scenario())
        asyncio.run(racing_routers())
        raw = first.main["MailOutbox"].select().where(
            first.main["MailOutbox"].kind == "transcript").first()
        assert "ann@example.com" not in (raw.to_enc or "")  # encrypted at rest
    finally:
        first.close()
        second.close()


def test_a_mail_link_code_opens_once_and_expires(urls: list[str]) -> None:
    # Two storages stand for two chat nodes: two clicks at once, one session.
    first, second = Storage(urls, cipher=CIPHER), Storage(urls, cipher=CIPHER)
    try:
        first.migrate_all()

        async def scenario() -> None:
            conv, visitor = new_id(), new_id()
            code = await first.mail_links.issue(visitor, conv, now=1000.0)
            assert len(code) >= 40
            raw = first.main["MailLinkCode"]
            assert raw.get_or_none(raw.code_hash == code) is None  # only the hash is kept
            won = await asyncio.gather(*(s.mail_links.redeem(code, now=2000.0)
                                         for s in (first, second) for _ in range(3)))
            opened = [w for w in won if not isinstance(w, str)]
            assert len(opened) == 1
            assert (opened[0].visitor_id, opened[0].conversation_id) == (visitor, conv)
            assert sorted(set(w for w in won if isinstance(w, str))) == ["link_used"]
            assert await second.mail_links.redeem("x" * 43, now=2000.0) == "link_unknown"

            late = await first.mail_links.issue(visitor, conv, now=1000.0)
            week_later = 1000.0 + LINK_CODE_TTL_SECS
            assert await second.mail_links.redeem(late, now=week_later) == "link_expired"
            assert await second.mail_links.redeem(late, now=week_later - 1) != "link_expired"
            assert await second.mail_links.redeem(late, now=week_later) == "link_used"

            # Long past their expiry, codes are deleted when new ones are made; erasure
            # deletes a contact's at once.
            kept = await first.mail_links.issue(visitor, conv, now=week_later)
            await first.mail_links.issue("someone", conv, now=week_later
                                         + LINK_CODE_KEEP_SECS + 1)
            assert await first.mail_links.redeem(late, now=week_later) == "link_unknown"
            assert await first.mail_links.erase(visitor) == 1
            assert await first.mail_links.redeem(kept, now=week_later) == "link_unknown"

        asyncio.run(scenario())
    finally:
        first.close()
        second.close()

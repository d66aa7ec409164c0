"""Mail both ways against real servers: an embedded Tidedesk, aiosmtpd in its own process
(tests/support/smtp_sink.py) and Debian's Dovecot with a throwaway mailbox.

Out: an agent reply to a visitor who left is mailed (both parts, the visitor's language,
threading headers, a reply token), several replies share one mail, and a mail server that is
down delays the mail without losing it. In: a reply APPENDed into the mailbox lands in the
conversation, in order and once; forged, unmatched and malformed mail goes nowhere and the
poller keeps running. Then the rating and the transcript, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import (
    Http,
    WsClient,
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
    ws,
)
from tests.support.mail import Dovecot, SmtpSink, wait_seen
from tests.support.metrics import moved, scrape
from tests.support.routing import GENERAL_ONLY
from tests.support.waiting import wait_until_async
from tidedesk.mail.links import LINK_CODE_TTL_SECS
from tidedesk.mail.retry import RetryPolicy
from tidedesk.mail.tokens import sign_reply_token
from tidedesk.runtime import Runtime

# Fast clocks for tests: the outbox is looked at every 50 ms, a reply waits 0.3 s for more.
FAST = {"mail_poll_s": 0.05, "imap_poll_s": 0.1, "mail_reply_delay_s": 0.3,
        "mail_from": "Tide Shop <help@shop.test>", "mail_link_url": "https://shop.test/help"}


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.asynccontextmanager
async def mail_desk(tmp_path: Path, smtp: SmtpSink, imap: Dovecot | None = None,
                    **extra: Any) -> AsyncIterator[Runtime]:
    settings: dict[str, Any] = {**FAST, "smtp_url": smtp.url, **extra}
    if imap is not None:
        settings["imap_url"] = imap.url
    async with embedded(tmp_path, GENERAL_ONLY, **settings) as rt:
        yield rt


async def absent_visitor_chat(rt: Runtime, locale: str = "en") -> tuple[str, str, WsClient]:
    """A visitor with an address chats with Ann, then leaves: (conversation, visitor token,
    Ann's socket)."""
    ann = add_agent(rt, "ann@shop.test", name="Ann")
    agent = await agent_socket(rt, "ann@shop.test")
    await wait_agent_online(rt, ann)
    _, token, visitor = await new_visitor(rt, opening="Where is my parcel?", name="Vera",
                                          email="vera@example.com", locale=locale)
    assigned = await agent.wait_type("assigned")
    conv_id = assigned["conversation_id"]
    await visitor.close()
    await wait_until_async("the visitor gone", lambda: _absent(rt, assigned["visitor"]["id"]),
                           5, every=0.02)
    return conv_id, token, agent


async def _absent(rt: Runtime, visitor_id: str) -> bool:
    return not await rt.store.presence_nodes(f"visitor:{visitor_id}", time.time())


def parts(msg: EmailMessage) -> dict[str, str]:
    out = {}
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            out[part.get_content_type()] = part.get_content()
    return out


def history(rt: Runtime, conv_id: str) -> Any:
    return rt.storage.messages.page(conv_id, after_seq=0, limit=100)


@pytest.fixture
def smtp(tmp_path: Path) -> Any:
    sink = SmtpSink(tmp_path / "smtp").start()
    yield sink
    sink.stop()


@pytest.fixture
def imap(tmp_path: Path) -> Any:
    server = Dovecot(tmp_path / "imap").start()
    yield server
    server.stop()


def test_a_mail_link_opens_the_chat_once(tmp_path: Path, smtp: SmtpSink) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp) as rt:
            conv_id, _, agent = await absent_visitor_chat(rt)
            await agent.say("Your parcel left today.", conversation_id=conv_id)
            [mail] = await smtp.wait_for(1)
            found = re.search(r"#tidedesk-code=([A-Za-z0-9_-]+)", parts(mail)["text/plain"])
            assert found is not None
            http = Http(rt)
            status, session = await http.request("POST", "/api/v1/visitors/mail-link",
                                                 {"code": found[1]})
            assert status == 200, session
            assert session["conversation_id"] == conv_id
            # The session is the visitor's own: their socket sees the chat and the reply.
            client = await ws(rt, "/ws/visitor", session["token"])
            hello = await client.wait_type("hello")
            assert hello["conversation_id"] == conv_id
            await client.send({"type": "resume", "after_seq": 0})
            await client.wait_type("message", body="Your parcel left today.")
            await client.close()

            # Once: a forwarded mail's link, clicked later, opens nothing and says what to do.
            status, again = await http.request("POST", "/api/v1/visitors/mail-link",
                                               {"code": found[1]})
            assert (status, again["error"]["code"]) == (410, "link_used")
            assert "new chat" in again["error"]["message"]  # the way forward
            old = await rt.storage.mail_links.issue(session["visitor_id"], conv_id,
                                                    now=time.time() - LINK_CODE_TTL_SECS - 1)
            status, late = await http.request("POST", "/api/v1/visitors/mail-link",
                                              {"code": old})
            assert (status, late["error"]["code"]) == (410, "link_expired")
            for body, code in (({"code": "short"}, "invalid_field"), ({}, "invalid_body"),
                               ({"code": found[1], "x": 1}, "invalid_body"),
                               ({"code": 12}, "invalid_body")):
                status, bad = await http.request("POST", "/api/v1/visitors/mail-link", body)
                assert (status, bad["error"]["code"]) == (400, code), body
            await agent.close()

    run(scenario())


def test_replies_to_an_absent_visitor_share_one_mail(tmp_path: Path, smtp: SmtpSink) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp) as rt:
            conv_id, token, agent = await absent_visitor_chat(rt, locale="zh-CN")
            await agent.say("已经发货了。", conversation_id=conv_id)
            await agent.say("Tracking: TD123", conversation_id=conv_id)
            [mail] = await smtp.wait_for(1)
            assert mail["X-Sink-To"] == "vera@example.com"
            assert mail["To"] == "vera@example.com"
            assert "help@shop.test" in mail["From"]
            assert mail["Subject"] == "Tide Shop 回复了您"
            assert mail.get_content_type() == "multipart/alternative"
            body = parts(mail)
            assert set(body) == {"text/plain", "text/html"}
            for kind in body:
                assert "已经发货了。" in body[kind] and "TD123" in body[kind]
                assert "Where is my parcel?" not in body[kind]  # only the new replies
            # The link carries a one-time code, not the visitor's token (issue 13's loose end).
            assert "https://shop.test/help#tidedesk-code=" in body["text/plain"]
            assert token not in body["text/plain"] and token not in body["text/html"]
            message_id = mail["Message-ID"]
            assert message_id.startswith("<td.reply.") and conv_id in message_id
            assert f"help+{conv_id}." in mail["Reply-To"]
            assert mail["In-Reply-To"] is None
            assert mail["Auto-Submitted"] == "auto-generated"

            # A later reply is a second mail, threaded under the first.
            await agent.say("It arrives tomorrow.", conversation_id=conv_id)
            second = (await smtp.wait_for(2))[1]
            assert second["In-Reply-To"] == message_id
            assert message_id in second["References"]
            assert "tomorrow" in parts(second)["text/plain"]
            assert "TD123" not in parts(second)["text/plain"]
            await asyncio.sleep(0.5)
            assert len(smtp.messages()) == 2  # nothing sent twice
            await agent.close()

    run(scenario())


def test_no_mail_while_the_visitor_is_connected_or_has_no_address(
        tmp_path: Path, smtp: SmtpSink) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp) as rt:
            ann = add_agent(rt, "ann@shop.test")
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            _, _, visitor = await new_visitor(rt, email="here@example.com")
            await visitor.say("hi")
            conv_id = (await agent.wait_type("assigned"))["conversation_id"]
            await agent.say("hello, you are here", conversation_id=conv_id)
            await visitor.wait_type("message", body="hello, you are here")
            await asyncio.sleep(0.6)
            assert smtp.messages() == []
            assert await rt.storage.mail.items(conv_id) == []  # nothing even noted
            await visitor.close()

            # A visitor who gave no address and left: noted, then skipped, never mailed.
            _, _, anonymous = await new_visitor(rt)
            await anonymous.say("anyone?")
            conv2 = (await agent.wait_for(lambda f: f.get("type") == "assigned"
                                          and f["conversation_id"] != conv_id))["conversation_id"]
            await anonymous.close()
            await asyncio.sleep(0.2)
            await agent.say("yes, me", conversation_id=conv2)

            async def skipped() -> bool:
                return [i.status for i in await rt.storage.mail.items(conv2)] == ["skipped"]

            await wait_until_async("the reply mail skipped", skipped, 5, every=0.05)
            assert smtp.messages() == []
            await agent.close()

    run(scenario())


def test_mail_server_down_holds_the_mail_until_it_is_back(tmp_path: Path,
                                                          smtp: SmtpSink) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp) as rt:
            assert rt.node is not None and rt.node.mail.sender is not None
            rt.node.mail.sender.retry = RetryPolicy(base_s=0.2, cap_s=0.5)
            conv_id, _, agent = await absent_visitor_chat(rt)
            smtp.stop()
            started = time.monotonic()
            ack = await agent.say("Your refund is on its way.", conversation_id=conv_id)
            assert ack["type"] == "ack"
            # The chat path did not wait for the mail server.
            assert time.monotonic() - started < 1.0

            async def failed_twice() -> bool:
                items = await rt.storage.mail.items(conv_id)
                return bool(items) and items[0].attempts >= 2 and items[0].status == "pending"

            await wait_until_async("the outbox to hold the mail through failures",
                                   failed_twice, 10, every=0.05)
            smtp.start()
            [mail] = await smtp.wait_for(1)
            assert "refund" in parts(mail)["text/plain"]

            async def sent() -> list[Any] | None:
                items = await rt.storage.mail.items(conv_id)
                return items if [i.status for i in items] == ["sent"] else None

            items = await wait_until_async("the outbox row sent", sent, 5, every=0.05)
            assert items[0].attempts >= 2 and items[0].last_error == ""
            await asyncio.sleep(0.5)
            assert len(smtp.messages()) == 1
            await agent.close()

    run(scenario())


def reply_mail(in_reply_to: str, text: str, *, message_id: str | None = None,
               subject: str = "Re: New reply") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Vera <vera@example.com>"
    msg["To"] = "help@shop.test"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="example.com")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(text)
    return bytes(msg)


def test_an_email_reply_lands_in_the_conversation_once(tmp_path: Path, smtp: SmtpSink,
                                                        imap: Dovecot) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp, imap) as rt:
            conv_id, _, agent = await absent_visitor_chat(rt)
            await agent.say("Which colour did you want?", conversation_id=conv_id)
            [mail] = await smtp.wait_for(1)
            raw = reply_mail(mail["Message-ID"],
                             "Blue, please.\n\nThanks\n\nOn Tue, 1 Dec 2026, Tide Shop wrote:\n"
                             "> Which colour did you want?\n")
            imap.append(raw)
            got = await agent.wait_for(lambda f: f.get("type") == "message"
                                       and f.get("from") == "visitor" and f["seq"] > 2)
            assert got["body"] == "Blue, please.\n\nThanks"
            assert got["conversation_id"] == conv_id
            stored = await history(rt, conv_id)
            assert [(m.from_, m.body) for m in stored] == [
                ("visitor", "Where is my parcel?"), ("agent", "Which colour did you want?"),
                ("visitor", "Blue, please.\n\nThanks")]
            assert [m.seq for m in stored] == sorted(m.seq for m in stored)
            await asyncio.to_thread(wait_seen, imap)

            # The same mail again (re-delivered, or the mailbox re-read): stored once.
            imap.append(raw)
            await asyncio.to_thread(wait_seen, imap)
            await asyncio.sleep(0.3)
            assert len(await history(rt, conv_id)) == 3

            # An answer after the chat was closed reopens it: routed to Ann again.
            await agent.send({"type": "close", "conversation_id": conv_id})
            await agent.wait_type("closed", conversation_id=conv_id)
            start = len(agent.frames)
            imap.append(reply_mail(mail["Message-ID"], "One more thing: gift wrap?"))
            again = await agent.wait_for(lambda f: f.get("type") == "assigned", start=start)
            assert again["conversation_id"] == conv_id
            conv = await rt.storage.conversations.get(conv_id)
            assert conv is not None and conv.state == "assigned"
            bodies = [m.body for m in await history(rt, conv_id)]
            assert bodies[-1] == "One more thing: gift wrap?"
            await agent.close()

    run(scenario())


def test_forged_unmatched_and_malformed_mail_goes_nowhere(tmp_path: Path, smtp: SmtpSink,
                                                          imap: Dovecot) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp, imap) as rt:
            conv_id, _, agent = await absent_visitor_chat(rt)
            secret = rt.settings.jwt_secret
            good = sign_reply_token(secret, conv_id, time.time())
            forged = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
            expired = sign_reply_token(secret, conv_id, time.time() - 10, ttl_s=1)
            other = sign_reply_token("x" * 40, conv_id, time.time())
            html_only = EmailMessage()
            html_only["Message-ID"] = make_msgid()
            html_only["In-Reply-To"] = f"<td.reply.1.{good}@shop.test>"
            html_only.set_content("<p>only html</p>", subtype="html")
            huge = EmailMessage()
            huge["In-Reply-To"] = f"<td.reply.1.{good}@shop.test>"
            huge.set_content("see the attachment")
            huge.add_attachment(b"\0" * (2 * 1024 * 1024), maintype="application",
                                subtype="octet-stream", filename="big.bin")
            broken = (b"Message-ID: <b1@example.com>\r\nIn-Reply-To: <td.reply.1." +
                      good.encode() + b"@shop.test>\r\nContent-Type: text/plain; "
                      b"charset=x-no-such-charset\r\n\r\n\xff\xfe hello\r\n")
            auto = reply_mail(f"<td.reply.1.{good}@shop.test>", "I am out of office")
            auto = b"Auto-Submitted: auto-replied\r\n" + auto
            outcomes = ("bad_token", "no_match", "no_text", "too_large", "bad_encoding",
                        "auto_reply", "accepted")
            before = await scrape(rt.port or 0)
            for raw in (reply_mail(f"<td.reply.1.{forged}@shop.test>", "forged"),
                        reply_mail(f"<td.reply.1.{expired}@shop.test>", "expired"),
                        reply_mail(f"<td.reply.1.{other}@shop.test>", "other key"),
                        reply_mail("", "no token at all"), bytes(html_only), bytes(huge),
                        broken, auto):
                imap.append(raw)
            await asyncio.to_thread(wait_seen, imap, 15)
            # Handled, but a person sharing the mailbox still sees them as unread.
            assert await asyncio.to_thread(imap.unseen) == 8
            # The poller is still running: a good reply after all that still lands.
            imap.append(reply_mail(f"<td.reply.1.{good}@shop.test>", "still here"))
            await agent.wait_type("message", body="still here", timeout=10)
            bodies = [m.body for m in await history(rt, conv_id)]
            assert bodies == ["Where is my parcel?", "still here"]

            # The poller counts a reply once its post returned, which may be a moment after
            # the agent already has the message.
            async def counted() -> Any:
                scraped = await scrape(rt.port or 0)
                return scraped if moved(before, scraped, "tidedesk_mail_incoming_total",
                                        outcome="accepted") else None

            after = await wait_until_async("the good reply counted", counted, 5, every=0.05)
            assert {o: moved(before, after, "tidedesk_mail_incoming_total", outcome=o)
                    for o in outcomes} == {
                "bad_token": 3, "no_match": 1, "no_text": 1, "too_large": 1,
                "bad_encoding": 1, "auto_reply": 1, "accepted": 1}
            await agent.close()

    run(scenario())


def test_rating_after_close(tmp_path: Path, smtp: SmtpSink) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp) as rt:
            ann = add_agent(rt, "ann@shop.test", role="supervisor")
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            _, _, visitor = await new_visitor(rt, email="vera@example.com")
            assert visitor.of_type("hello")[0]["mail"] is True
            await visitor.say("hello")
            conv_id = (await agent.wait_type("assigned"))["conversation_id"]

            await visitor.send({"type": "rating", "score": 5})
            err = await visitor.wait_type("error")
            assert err["code"] == "conversation_open"

            await agent.send({"type": "close", "conversation_id": conv_id})
            await visitor.wait_type("state", state="closed")
            for bad, field in (({"score": 0}, "score"), ({"score": 6}, "score"),
                               ({"score": "5"}, "score"), ({"score": 3, "comment": 7}, "comment"),
                               ({}, "score")):
                start = len(visitor.frames)
                await visitor.send({"type": "rating", **bad})
                err = await visitor.wait_for(lambda f: f.get("type") == "error", start=start)
                assert err["code"] in ("invalid_field", "missing_field")
                assert f"'{field}'" in err["message"], err
            await visitor.send({"type": "rating", "score": 4, "comment": "quick, thanks"})
            rated = await visitor.wait_type("rated")
            assert rated == {"type": "rated", "conversation_id": conv_id, "score": 4,
                             "comment": "quick, thanks"}
            seen = await agent.wait_type("rated")
            assert seen["score"] == 4 and seen["conversation_id"] == conv_id
            await visitor.send({"type": "rating", "score": 1})
            err = await visitor.wait_for(lambda f: f.get("code") == "already_rated")
            assert "once" in err["message"] or "already" in err["message"]

            token = await login(rt, "ann@shop.test")
            status, data = await Http(rt).request(
                "GET", f"/api/v1/conversations/{conv_id}/rating", token=token)
            assert status == 200 and data["rating"]["score"] == 4
            status, overview = await Http(rt).request("GET", "/api/v1/supervisor/overview",
                                                      token=token)
            assert status == 200
            assert overview["ratings"]["count"] == 1 and overview["ratings"]["average"] == 4
            assert (await rt.storage.ratings.get(conv_id)).comment == "quick, thanks"
            await visitor.close()
            await agent.close()

    run(scenario())


def test_transcript_by_mail(tmp_path: Path, smtp: SmtpSink) -> None:
    async def scenario() -> None:
        async with mail_desk(tmp_path, smtp) as rt:
            ann = add_agent(rt, "ann@shop.test", name="Ann")
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            _, token, visitor = await new_visitor(rt, locale="en")
            await visitor.say("Do you ship to Norway?")
            conv_id = (await agent.wait_type("assigned"))["conversation_id"]
            await agent.say("Yes, in 3 days.", conversation_id=conv_id)
            await visitor.wait_type("message", body="Yes, in 3 days.")
            http = Http(rt)
            path = f"/api/v1/conversations/{conv_id}/transcript"
            assert (await http.request("POST", path, {"email": "nope"}, token=token))[0] == 400
            assert (await http.request("POST", path, {"email": "a@b.co", "x": 1},
                                       token=token))[0] == 400
            _, other, other_ws = await new_visitor(rt)
            assert (await http.request("POST", path, {"email": "a@b.co"},
                                       token=other))[0] == 403
            assert (await http.request("POST", path, {"email": "a@b.co"}))[0] == 401
            status, data = await http.request("POST", path, {"email": "vera@example.com"},
                                              token=token)
            assert status == 202 and data == {"queued": True}
            [mail] = await smtp.wait_for(1)
            assert mail["To"] == "vera@example.com"
            assert mail["Subject"] == "Your chat with Tide Shop"
            text = parts(mail)["text/plain"]
            assert text.index("Do you ship to Norway?") < text.index("Yes, in 3 days.")
            assert "Ann" in text
            assert "Norway" in parts(mail)["text/html"]
            await visitor.close()
            await other_ws.close()
            await agent.close()

    run(scenario())


def test_without_mail_settings_the_widget_is_promised_no_mail(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            _, token, visitor = await new_visitor(rt, email="v@example.com")
            assert "mail" not in visitor.of_type("hello")[0]
            await visitor.say("hi")
            conv_id = visitor.of_type("hello")[-1]["conversation_id"]
            status, data = await Http(rt).request(
                "POST", f"/api/v1/conversations/{conv_id}/transcript",
                {"email": "v@example.com"}, token=token)
            assert status == 409 and data["error"]["code"] == "mail_disabled"
            assert rt.node is not None and rt.node.mail.sender is None
            await visitor.close()

    run(scenario())

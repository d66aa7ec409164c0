"""Mail in a cluster: two chat nodes (each runs an outbox sender and an IMAP poller) and two
routers on RabbitMQ, Redis and MariaDB, with aiosmtpd and Dovecot. A reply to an absent
visitor goes out once (atomic claims), and the visitor's e-mail answer lands once, though two
pollers read the mailbox."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from tests.support.clients import login, new_visitor, ws
from tests.support.cluster import cluster
from tests.support.mail import Dovecot, SmtpSink
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]


def test_two_nodes_send_once_and_read_once(tmp_path: Path) -> None:
    smtp = SmtpSink(tmp_path / "smtp").start()
    imap = Dovecot(tmp_path / "imap").start()
    try:
        with cluster(tmp_path, shards=1) as c:
            c.env.update({"TIDEDESK_SMTP_URL": smtp.url, "TIDEDESK_IMAP_URL": imap.url,
                          "TIDEDESK_MAIL_FROM": "Tide Shop <help@shop.test>",
                          "TIDEDESK_MAIL_POLL_S": "0.05", "TIDEDESK_IMAP_POLL_S": "0.1",
                          "TIDEDESK_MAIL_REPLY_DELAY_S": "0.5"})
            agent_id = c.add_agent("ann@shop.test")
            node1 = c.start("chatnode", "node1")
            node2 = c.start("chatnode", "node2")
            c.start("router", "router1")
            c.start("router", "router2")

            async def scenario() -> None:
                token = await login(node2, "ann@shop.test")  # type: ignore[arg-type]
                console = await ws(node2, "/ws/agent", token)  # type: ignore[arg-type]
                await console.wait_type("hello")
                await wait_until_async("Ann online", lambda: c.agent_online(agent_id), 30)
                _, _, visitor = await new_visitor(node1, opening="Is it in stock?",  # type: ignore[arg-type]
                                                  email="vera@example.com")
                conv = (await console.wait_type("assigned", timeout=15))["conversation_id"]
                await visitor.close()
                await asyncio.sleep(0.3)  # presence removed at once on a clean close
                for text in ("Yes.", "Two left."):
                    assert (await console.say(text, conversation_id=conv))["type"] == "ack"
                [mail] = await smtp.wait_for(1, timeout=20)
                body = mail.get_body(("plain",))
                assert body is not None and "Two left." in body.get_content()
                await asyncio.sleep(1.0)
                assert len(smtp.messages()) == 1  # two senders, one mail

                answer = EmailMessage()
                answer["From"] = "vera@example.com"
                answer["To"] = "help@shop.test"
                answer["Message-ID"] = make_msgid(domain="example.com")
                answer["In-Reply-To"] = mail["Message-ID"]
                answer.set_content("I take both.\n\nOn Tue, Tide Shop wrote:\n> Two left.")
                imap.append(bytes(answer))
                got = await console.wait_for(lambda f: f.get("type") == "message"
                                             and f.get("from") == "visitor" and f["seq"] > 3,
                                             timeout=20)
                assert got["body"] == "I take both."
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:  # both pollers had their rounds
                    await asyncio.sleep(0.1)
                stored = await c.storage.messages.page(conv, after_seq=0, limit=50)
                assert [m.body for m in stored] == ["Is it in stock?", "Yes.", "Two left.",
                                                    "I take both."]
                await console.close()

            asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        imap.stop()
        smtp.stop()

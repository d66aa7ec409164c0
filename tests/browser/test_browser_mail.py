"""Rating and transcript in a real Chromium (issue 13): after the agent closes the chat, the
widget offers a 1-5 rating (shown in the console) and mails the transcript through the real
SMTP server (aiosmtpd in its own process); and a reply mail's one-time link reopens the chat
in the widget, once: followed again, it opens a new chat and says why."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, Server, screenshot
from tests.browser.ui_pages import Console, Widget
from tests.support.mail import SmtpSink
from tests.support.processes import free_port

pytestmark = pytest.mark.browser

SMTP_PORT = free_port()
SERVER_ENV = {"TIDEDESK_SMTP_URL": f"smtp://127.0.0.1:{SMTP_PORT}",
              "TIDEDESK_MAIL_FROM": "Tide Shop <help@shop.test>",
              "TIDEDESK_MAIL_POLL_S": "0.1", "TIDEDESK_MAIL_REPLY_DELAY_S": "0.2"}


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    smtp = SmtpSink(Path(tmp_path_factory.mktemp("smtp")), port=SMTP_PORT).start()
    yield smtp
    smtp.stop()


def test_offline_form_promises_mail_when_the_server_sends_it(sink: SmtpSink, server: Server,
                                                             new_context: Any) -> None:
    # No agent is signed in yet: the chat is offline and the form asks for the address.
    # (No conversation before the first message: state "new", with hello's "available" false.)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    expect(visitor.host).to_have_attribute("data-state", "new")
    form = visitor.page.get_by_test_id("td-offline-form")
    expect(form).to_contain_text("answer by email")
    visitor.page.get_by_test_id("td-off-message").fill("Do you ship to Norway?")
    visitor.page.get_by_test_id("td-off-submit").click()
    expect(form).to_contain_text("Please enter your email")
    visitor.page.get_by_test_id("td-off-email").fill("ingrid@example.no")
    visitor.page.get_by_test_id("td-off-submit").click()
    expect(visitor.page.get_by_test_id("td-offline-thanks")).to_contain_text("reply by email")


def test_rating_and_transcript_after_close(sink: SmtpSink, server: Server,
                                           new_context: Any) -> None:
    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    page = visitor.page
    visitor.send("Do you have the lamp in green?")
    agent.open_chat_with("lamp in green")
    agent.send("Yes, two left.")
    visitor.expect_message("Yes, two left.")
    expect(page.get_by_test_id("td-after")).to_be_hidden()  # nothing to rate while open

    agent.close_current_chat()
    expect(visitor.host).to_have_attribute("data-state", "closed")
    expect(page.get_by_test_id("td-rating")).to_be_visible()
    page.get_by_test_id("td-rate-send").click()  # no stars picked yet: asks for them
    expect(page.get_by_test_id("td-rating")).to_contain_text("1 to 5")
    page.get_by_test_id("td-star-4").click()
    expect(page.get_by_test_id("td-star-4")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("td-star-5")).to_have_attribute("aria-pressed", "false")
    page.get_by_test_id("td-rate-comment").fill("Quick answer")
    page.get_by_test_id("td-rate-send").click()
    expect(page.get_by_test_id("td-rate-thanks")).to_have_text("Thank you for your rating!")
    expect(page.get_by_test_id("td-rating")).to_be_hidden()
    rating = agent.page.get_by_test_id("chat-rating")
    expect(rating).to_contain_text("4/5")
    expect(rating).to_contain_text("Quick answer")

    page.get_by_test_id("td-transcript-email").fill("vera@example.com")
    page.get_by_test_id("td-transcript-send").click()
    expect(page.get_by_test_id("td-transcript-note")).to_contain_text("vera@example.com")
    [mail] = sink.wait_for_sync(1)
    assert mail["To"] == "vera@example.com"
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.index("Do you have the lamp in green?") < text.index("Yes, two left.")
    screenshot(page, "widget-rated")

    # In Chinese the same panel speaks Chinese.
    page.get_by_test_id("td-lang").click()
    expect(page.get_by_test_id("td-rate-thanks")).to_have_text("感谢您的评价！")


def test_a_mail_link_reopens_the_chat_once(sink: SmtpSink, server: Server,
                                          new_context: Any) -> None:
    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    first = Widget(new_context().new_page(), server.base_url).open()
    first.send("I will read your answer later")
    first.expect_message("I will read your answer later")
    expect(first.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(0)
    token = first.page.evaluate(
        "() => Object.entries(localStorage).find(([k]) => k.endsWith(':token'))[1]")
    status = first.page.evaluate("""async (token) => (await fetch('/api/v1/visitors/contact', {
        method: 'POST', headers: {'Content-Type': 'application/json',
                                  Authorization: 'Bearer ' + token},
        body: JSON.stringify({email: 'olga@example.com'})})).status""", token)
    assert status == 200
    first.page.close()  # the visitor leaves; the answer goes by mail
    agent.open_chat_with("read your answer later")
    before = len(sink.messages())
    agent.send("It ships tomorrow.")
    mail = next(m for m in sink.wait_for_sync(before + 1, timeout=20)[before:]
                if m["To"] == "olga@example.com")
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(r"#tidedesk-code=([A-Za-z0-9_-]+)", text)
    assert found is not None and token not in text  # a one-time code, not the token
    link = f"{server.base_url}/demo#tidedesk-code={found[1]}"

    # Another browser (the visitor's phone) follows the link from the mail: the chat reopens.
    phone = new_context().new_page()
    phone.goto(link)
    expect(phone.get_by_test_id("td-panel")).to_be_visible()
    for body in ("I will read your answer later", "It ships tomorrow."):
        expect(phone.get_by_test_id("td-body").filter(has_text=body)).to_have_count(1)
    assert "#tidedesk" not in phone.url  # the code is dropped from the address bar
    expect(phone.get_by_test_id("td-link-note")).to_have_count(0)

    # The mail was forwarded: the same link, followed again elsewhere, opens a new chat and
    # says why, in the visitor's language.
    other = new_context().new_page()
    other.goto(link)
    note = other.get_by_test_id("td-link-note")
    expect(note).to_contain_text("already used")
    expect(note).to_contain_text("reply to the e-mail")
    expect(other.locator("tidedesk-widget")).to_have_attribute("data-conn", "online")
    expect(other.locator("tidedesk-widget")).to_have_attribute("data-state", "new")
    expect(other.get_by_test_id("td-body").filter(has_text="It ships tomorrow.")).to_have_count(0)
    screenshot(other, "widget-mail-link-used")
    other.get_by_test_id("td-lang").click()
    expect(note).to_contain_text("只能使用一次")
    other.get_by_test_id("td-input").fill("我想再问一下")
    other.get_by_test_id("td-input").press("Enter")
    expect(note).to_have_count(0)  # writing here is the way forward taken

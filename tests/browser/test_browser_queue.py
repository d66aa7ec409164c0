"""An agent at their chat limit: the next visitor waits in line and is served when a chat closes.

Its own server, so that only the one-chat agent is online in the ``general`` pool.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, Server, screenshot
from tests.browser.ui_pages import Console, Widget

pytestmark = pytest.mark.browser


def test_offline_form_when_nobody_is_online(server: Server, new_context: Any) -> None:
    visitor = Widget(new_context().new_page(), server.base_url).open()
    # No conversation until the first message, but hello says nobody could answer: the form
    # comes first, and nothing promises a reply "in a few minutes".
    expect(visitor.host).to_have_attribute("data-state", "new")
    form = visitor.page.get_by_test_id("td-offline-form")
    expect(form).to_be_visible()
    expect(visitor.page.get_by_test_id("td-welcome")).not_to_contain_text("few minutes")
    expect(visitor.page.get_by_test_id("td-status")).to_have_text("We are offline right now")
    # This server sends no mail (no TIDEDESK_SMTP_URL): the form promises an answer in the
    # chat, not by e-mail, and needs no address (tests/browser/test_browser_mail.py: with mail).
    expect(form).to_contain_text("answer here")
    expect(form).not_to_contain_text("by email")
    visitor.page.get_by_test_id("td-off-message").fill("Do you ship to Norway?")
    visitor.page.get_by_test_id("td-off-name").fill("Ingrid")
    visitor.page.get_by_test_id("td-off-submit").click()
    thanks = visitor.page.get_by_test_id("td-offline-thanks")
    expect(thanks).to_be_visible()
    expect(thanks).not_to_contain_text("email")
    expect(form).to_be_hidden()
    expect(visitor.host).to_have_attribute("data-state", "offline")
    expect(visitor.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(0)
    visitor.expect_message("Do you ship to Norway?")
    # The name went to the visitor's record, not into the bubble.
    expect(visitor.page.get_by_test_id("td-body")).to_have_text(["Do you ship to Norway?"])
    screenshot(visitor.page, "widget-offline-form")


def test_second_visitor_sees_queue_position_then_assignment(server: Server,
                                                            new_context: Any) -> None:
    server.create_agent(email="solo@example.com", password="solo-password-1", name="Sam Solo",
                        pools="general", max_chats=1)
    agent = Console(new_context().new_page(), server.base_url).sign_in(
        "solo@example.com", "solo-password-1")

    first = Widget(new_context().new_page(), server.base_url).open()
    first.send("I need help with my order")
    agent.open_chat_with("my order")
    expect(first.host).to_have_attribute("data-state", "assigned")

    second = Widget(new_context().new_page(), server.base_url).open()
    expect(second.host).to_have_attribute("data-state", "new")  # opening takes no slot
    expect(second.page.get_by_test_id("td-welcome")).to_contain_text("few minutes")
    second.send("Anyone there?")
    expect(second.host).to_have_attribute("data-state", "queued")
    expect(second.page.get_by_test_id("td-queue")).to_have_text("You are number 1 in line.")
    expect(second.page.get_by_test_id("td-status")).to_have_text("#1 in line")
    screenshot(second.page, "widget-queued")

    # The supervisor sees the agent at their limit and the visitor waiting.
    sv = new_context().new_page()
    sv.goto(server.base_url + "/supervisor")
    sv.get_by_test_id("login-email").fill(DEMO_EMAIL)
    sv.get_by_test_id("login-password").fill(DEMO_PASSWORD)
    sv.get_by_test_id("login-submit").click()
    expect(sv.get_by_test_id("count-waiting")).to_have_text("1")
    expect(sv.get_by_test_id("count-online")).to_have_text("1")
    expect(sv.get_by_test_id("sv-agent").filter(has_text="Sam Solo")).to_contain_text("1 / 1")
    expect(sv.locator("[data-testid=sv-pool][data-pool=general] [data-testid=sv-waiting]"))\
        .to_have_count(1)
    screenshot(sv, "supervisor")

    # Closing the first chat frees the slot: the queue drains into it, live on both sides.
    agent.close_current_chat()
    expect(first.page.get_by_test_id("td-closed")).to_be_visible()
    expect(second.host).to_have_attribute("data-state", "assigned")
    expect(second.page.get_by_test_id("td-assigned")).to_have_text(
        "You are chatting with Sam Solo.")
    expect(second.page.get_by_test_id("td-queue")).to_have_count(0)
    waiting_chat = agent.chat_items().filter(has_text="Anyone there?")
    expect(waiting_chat.get_by_test_id("unread")).to_have_text("1")
    agent.open_chat_with("Anyone there?")
    expect(waiting_chat.get_by_test_id("unread")).to_have_count(0)
    agent.send("Sorry for the wait!")
    second.expect_message("Sorry for the wait!")
    expect(sv.get_by_test_id("count-waiting")).to_have_text("0")

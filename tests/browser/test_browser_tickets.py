"""Tickets in the console (issue 13): a message left while nobody was online is a ticket the
agent sees on signing in, reads and answers with the visitor gone, then takes.

Its own server, so that nobody is online when the visitor writes."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, Server, screenshot
from tests.browser.ui_pages import Console, Widget

pytestmark = pytest.mark.browser


def test_a_ticket_is_read_answered_and_taken_from_the_console(server: Server,
                                                              new_context: Any) -> None:
    visitor_ctx = new_context()
    visitor = Widget(visitor_ctx.new_page(), server.base_url).open()
    visitor.page.get_by_test_id("td-off-message").fill("Is the walnut desk back in stock?")
    visitor.page.get_by_test_id("td-off-email").fill("mia@example.com")
    visitor.page.get_by_test_id("td-off-submit").click()
    expect(visitor.page.get_by_test_id("td-offline-thanks")).to_be_visible()
    expect(visitor.host).to_have_attribute("data-state", "offline")
    visitor_ctx.close()  # the visitor leaves: the ticket waits for an agent

    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL,
                                                                       DEMO_PASSWORD)
    item = agent.chat_items().filter(has_text="walnut desk")
    expect(item).to_have_count(1)
    expect(item.get_by_test_id("ticket-tag")).to_have_text("Ticket")
    item.click()
    agent.expect_message("Is the walnut desk back in stock?")
    take = agent.page.get_by_test_id("take")
    expect(take).to_be_visible()
    agent.send("Yes, since Monday. Shall I keep one for you?")
    agent.expect_all_acked()
    screenshot(agent.page, "console-ticket")
    take.click()
    expect(item.get_by_test_id("ticket-tag")).to_have_count(0)
    expect(take).to_be_hidden()
    expect(agent.page.get_by_test_id("transfer")).to_be_visible()

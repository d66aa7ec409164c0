"""The server restarts under a live chat: widget and console reconnect (backoff) and resume.

Its own server, since the test stops and starts it (same port, same data directory).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, Server
from tests.browser.ui_pages import Console, Widget

pytestmark = pytest.mark.browser


def test_chat_survives_a_server_restart(server: Server, new_context: Any) -> None:
    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    visitor.send("Before the restart")
    agent.open_chat_with("Before the restart")
    agent.send("Hello before")
    visitor.expect_message("Hello before")

    server.stop()
    expect(visitor.host).not_to_have_attribute("data-conn", "online")
    expect(agent.page.get_by_test_id("conn")).not_to_have_attribute("data-state", "online")
    visitor.send("Written while the server is down")
    server.start()

    # Backoff with jitter: the next attempt may be several seconds away.
    expect(visitor.host).to_have_attribute("data-conn", "online", timeout=30000)
    expect(agent.page.get_by_test_id("conn")).to_have_attribute("data-state", "online",
                                                                 timeout=30000)
    agent.expect_message("Written while the server is down")
    agent.send("Hello after")
    visitor.expect_message("Hello after")
    expect(visitor.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(0)
    assert [b for _, _, b in visitor.messages()] == [
        "Before the restart", "Hello before", "Written while the server is down", "Hello after"]
    seqs = [seq for seq, _, _ in visitor.messages()]
    assert seqs == sorted(set(seqs))
    assert [b for _, _, b, _ in agent.messages()] == [
        "Before the restart", "Hello before", "Written while the server is down", "Hello after"]

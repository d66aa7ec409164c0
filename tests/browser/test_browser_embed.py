"""The widget embedded the way shops embed it: on another site (another origin), whose page has
a strict Content-Security-Policy. Its own server, which allows the shop's origin."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, Server
from tests.browser.ui_pages import Console, Widget
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.browser

SHOP_PORT = free_port()
SHOP_ORIGIN = f"http://127.0.0.1:{SHOP_PORT}"
SERVER_ENV = {"TIDEDESK_ALLOWED_ORIGINS": SHOP_ORIGIN}


@pytest.fixture(scope="module")
def shop(server: Server) -> Iterator[str]:
    """A shop page on its own origin that loads the widget from the Tidedesk server."""
    chat = server.base_url
    ws = chat.replace("http://", "ws://")
    csp = (f"default-src 'self'; script-src 'self' {chat}; style-src 'self'; "
           f"connect-src 'self' {chat} {ws}")
    page = (f"<!doctype html><meta charset=utf-8><title>Strict shop</title>"
            f"<h1>A shop with a strict CSP</h1>"
            f"<script src='{chat}/widget.js' data-lang='en'></script>").encode()
    # The same shop asking for consent before the first message (issue 18).
    consent = page.replace(b"data-lang='en'", b"data-lang='zh-CN' data-consent='true' "
                           b"data-privacy-url='https://shop.example/privacy'")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", csp)
            self.end_headers()
            self.wfile.write(consent if self.path.startswith("/consent") else page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", SHOP_PORT), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield SHOP_ORIGIN
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _open_shop(new_context: Any, shop: str, path: str = "/") -> tuple[Widget, list[str]]:
    page = new_context().new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.goto(shop + path)
    page.get_by_test_id("td-launcher").click()
    return Widget(page, shop), problems


def test_widget_styles_itself_under_a_strict_csp(shop: str, new_context: Any) -> None:
    visitor, problems = _open_shop(new_context, shop)
    expect(visitor.page.get_by_test_id("td-panel")).to_be_visible()
    launcher_bg = visitor.page.get_by_test_id("td-launcher").evaluate(
        "el => getComputedStyle(el).backgroundColor")
    assert launcher_bg == "rgb(15, 118, 110)"  # the stylesheet was not blocked
    assert [p for p in problems if "Content Security Policy" in p] == []


def test_widget_on_another_site_chats_with_an_agent(server: Server, shop: str,
                                                    new_context: Any) -> None:
    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    visitor, problems = _open_shop(new_context, shop)
    expect(visitor.host).to_have_attribute("data-conn", "online", timeout=4000)
    visitor.send("Hello from another site")
    agent.open_chat_with("another site")
    agent.send("Hello, shop visitor")
    visitor.expect_message("Hello, shop visitor")
    assert problems == []


def test_the_consent_line_comes_before_the_first_message(shop: str, new_context: Any) -> None:
    visitor, _ = _open_shop(new_context, shop, "/consent")
    page = visitor.page
    consent = page.get_by_test_id("td-consent")
    expect(consent).to_be_visible()
    expect(consent).to_contain_text("我们会保存本次对话")  # zh-CN, as the page asked
    expect(consent.locator("a")).to_have_attribute("href", "https://shop.example/privacy")
    # Nobody is online here: the offline form waits behind the consent line too.
    expect(page.get_by_test_id("td-input")).to_be_hidden()
    expect(page.get_by_test_id("td-offline-form")).to_be_hidden()
    page.get_by_test_id("td-consent-agree").click()
    expect(consent).to_be_hidden()
    wait_until("the composer or the offline form", lambda: page.get_by_test_id(
        "td-offline-form").is_visible() or page.get_by_test_id("td-input").is_visible(), 10)
    page.reload()  # agreed once is remembered (and the panel stays open)
    wait_until("the composer or the offline form", lambda: page.get_by_test_id(
        "td-offline-form").is_visible() or page.get_by_test_id("td-input").is_visible(), 10)
    expect(page.get_by_test_id("td-consent")).to_be_hidden()

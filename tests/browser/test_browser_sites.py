"""Several sites in Chromium: a site's widget takes its colour and greeting from the admin's
settings (a change shows in a new browser context without a restart), and an unknown site's
widget says, quietly, that chat is unavailable."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, UI_TIMEOUT_MS, Server
from tests.support.http import http_json
from tests.support.processes import free_port

pytestmark = pytest.mark.browser

SHOP_PORT = free_port()
SHOP_ORIGIN = f"http://127.0.0.1:{SHOP_PORT}"
SERVER_ENV = {"TIDEDESK_ALLOWED_ORIGINS": SHOP_ORIGIN}


@pytest.fixture(scope="module")
def shop(server: Server) -> Iterator[str]:
    """Shop pages on their own origin: /?site=NAME embeds the widget of that site. The page
    styles its own buttons, which must not reach the widget (and the other way round)."""
    chat = server.base_url

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site = parse_qs(urlsplit(self.path).query).get("site", ["default"])[0]
            page = (f"<!doctype html><meta charset=utf-8><title>Shop {site}</title>"
                    "<style>button{background:rgb(1,2,3)!important}</style>"
                    "<h1>Shop</h1><button id=buy>Buy</button>"
                    f"<script src='{chat}/widget.js' data-lang='en' data-site='{site}'>"
                    "</script>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page)

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


def _admin(server: Server) -> str:
    status, tokens = http_json("POST", f"{server.base_url}/api/v1/auth/login",
                               {"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
    assert status == 200, tokens
    return str(tokens["access_token"])


def _launcher_colour(new_context: Any, shop: str, site: str) -> tuple[Any, str]:
    page = new_context().new_page()
    page.goto(f"{shop}/?site={site}")
    launcher = page.locator("[data-testid=td-launcher]")
    expect(launcher).to_be_visible(timeout=UI_TIMEOUT_MS)
    return page, launcher.evaluate("el => getComputedStyle(el).backgroundColor")


def test_site_branding_applies_live_and_unknown_sites_are_quiet(
        server: Server, shop: str, new_context: Any) -> None:
    admin = _admin(server)
    status, _ = http_json("PUT", f"{server.base_url}/api/v1/sites/tea",
                          {"color": "#aa3300", "greeting": "Tea time: ask away",
                           "position": "bottom-left"}, token=admin)
    assert status == 200
    page, _ = _launcher_colour(new_context, shop, "tea")
    launcher = page.locator("[data-testid=td-launcher]")
    expect(launcher).to_have_css("background-color", "rgb(170, 51, 0)", timeout=UI_TIMEOUT_MS)
    host = page.locator("#tidedesk-widget")
    expect(host).to_have_attribute("data-position", "bottom-left", timeout=UI_TIMEOUT_MS)
    # The page's styles stay the page's: its button keeps its colour, the widget keeps its own.
    assert page.locator("#buy").evaluate("el => getComputedStyle(el).backgroundColor") == \
        "rgb(1, 2, 3)"
    launcher.click()
    expect(page.locator("[data-testid=td-log]")).to_contain_text("Tea time: ask away",
                                                                 timeout=UI_TIMEOUT_MS)
    # A change by the admin shows in a second browser context, no restart.
    assert http_json("PUT", f"{server.base_url}/api/v1/sites/tea", {"color": "#112233"},
                     token=admin)[0] == 200
    second, _ = _launcher_colour(new_context, shop, "tea")
    expect(second.locator("[data-testid=td-launcher]")).to_have_css(
        "background-color", "rgb(17, 34, 51)", timeout=UI_TIMEOUT_MS)
    # An unknown site: a quiet note, no composer, no error banner.
    gone, _ = _launcher_colour(new_context, shop, "closed-shop")
    expect(gone.locator("#tidedesk-widget")).to_have_attribute("data-unavailable", "true",
                                                               timeout=UI_TIMEOUT_MS)
    gone.locator("[data-testid=td-launcher]").click()
    expect(gone.locator("[data-testid=td-unavailable]")).to_have_text(
        "Chat is not available right now.", timeout=UI_TIMEOUT_MS)
    expect(gone.locator("[data-testid=td-input]")).to_be_hidden()
    expect(gone.locator("[data-testid=td-banner]")).to_be_hidden()

"""The start-up the four console pages share (admin, supervisor, inbox, reports; one helper,
``TDAuth.consolePage`` in auth.js): signed out, each shows the sign-in form; one sign-in opens
them all; the language chosen on one is the language of the others; signing out on one signs
out everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, UI_TIMEOUT_MS, Server

pytestmark = pytest.mark.browser

PAGES = ("/admin", "/supervisor", "/inbox", "/reports")


def signed_in(page: Any) -> None:
    expect(page.locator("#app")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator("#login")).to_be_hidden()


def signed_out(page: Any) -> None:
    expect(page.get_by_test_id("login-email")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator("#app")).to_be_hidden()


def test_the_console_pages_share_sign_in_language_and_sign_out(server: Server,
                                                               new_context: Any) -> None:
    page = new_context().new_page()
    for path in PAGES:
        page.goto(server.base_url + path)
        signed_out(page)
    page.get_by_test_id("login-email").fill(DEMO_EMAIL)
    page.get_by_test_id("login-password").fill(DEMO_PASSWORD)
    page.get_by_test_id("login-submit").click()
    signed_in(page)  # on /reports
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.select_option("[data-lang-select]:visible", "zh-CN")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")

    for path in PAGES:  # signed in and in Chinese on every page, without asking again
        page.goto(server.base_url + path)
        signed_in(page)
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("[data-lang-select]:visible")).to_have_value("zh-CN")

    page.goto(server.base_url + "/supervisor")
    signed_in(page)
    page.select_option("[data-lang-select]:visible", "en")
    expect(page).to_have_title("Tidedesk — Supervisor view")
    page.locator("[data-logout]").click()
    signed_out(page)
    assert page.evaluate("() => window.TDAuth.session") is None
    for path in PAGES:  # signed out everywhere; the form speaks the chosen language
        page.goto(server.base_url + path)
        signed_out(page)
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.get_by_test_id("login-submit")).to_have_text("Sign in")

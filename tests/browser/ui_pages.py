"""Page helpers for the widget and the console: what a person does, in one call each.

Locators use ``data-testid``; Playwright's locators pierce the widget's open shadow root.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

# The widget's messages, read from inside its shadow root: (seq or None while pending, from, body).
WIDGET_MESSAGES_JS = """() => {
  const root = document.querySelector('tidedesk-widget').shadowRoot;
  return Array.from(root.querySelectorAll('[data-testid=td-msg]')).map(el => [
    el.dataset.seq ? Number(el.dataset.seq) : null,
    el.dataset.from,
    (el.querySelector('[data-testid=td-body]') || el).textContent,
  ]);
}"""

CONSOLE_MESSAGES_JS = """() => Array.from(
  document.querySelectorAll('[data-testid=chat-log] [data-testid=msg]')
).map(el => [
  el.dataset.seq ? Number(el.dataset.seq) : null,
  el.dataset.from,
  el.querySelector('[data-testid=msg-body]').textContent,
  el.dataset.private === 'true',
])"""


class Widget:
    """The visitor's side: the demo shop page with the widget."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    def open(self, path: str = "/demo") -> Widget:
        self.page.goto(self.base_url + path)
        self.page.get_by_test_id("td-launcher").click()
        expect(self.page.get_by_test_id("td-panel")).to_be_visible()
        expect(self.host).to_have_attribute("data-conn", "online")
        return self

    @property
    def host(self) -> Any:
        return self.page.locator("tidedesk-widget")

    def send(self, text: str) -> None:
        box = self.page.get_by_test_id("td-input")
        box.fill(text)
        box.press("Enter")

    def bodies(self) -> Any:
        return self.page.get_by_test_id("td-body")

    def expect_message(self, text: str) -> None:
        expect(self.bodies().filter(has_text=text)).to_have_count(1)

    def messages(self) -> list[tuple[int | None, str, str]]:
        return [tuple(m) for m in self.page.evaluate(WIDGET_MESSAGES_JS)]  # type: ignore[misc]


class Console:
    """The agent console."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    def sign_in(self, email: str, password: str, *, totp_code: str | None = None) -> Console:
        page = self.page
        page.goto(self.base_url + "/console")
        page.get_by_test_id("login-email").fill(email)
        page.get_by_test_id("login-password").fill(password)
        page.get_by_test_id("login-submit").click()
        if totp_code is not None:
            expect(page.get_by_test_id("login-totp")).to_be_visible()
            page.get_by_test_id("login-totp").fill(totp_code)
            page.get_by_test_id("login-submit").click()
        self.expect_online()
        return self

    def expect_online(self) -> None:
        expect(self.page.get_by_test_id("conn")).to_have_attribute("data-state", "online")

    def chat_items(self) -> Any:
        return self.page.get_by_test_id("chat-item")

    def open_chat_with(self, text_in_preview: str) -> None:
        item = self.chat_items().filter(has_text=text_in_preview)
        expect(item).to_have_count(1)
        item.click()

    def composer(self) -> Any:
        return self.page.get_by_test_id("composer")

    def send(self, text: str) -> None:
        self.composer().fill(text)
        self.composer().press("Enter")
        expect(self.log_bodies().filter(has_text=text)).to_have_count(1)

    def log_bodies(self) -> Any:
        return self.page.get_by_test_id("chat-log").get_by_test_id("msg-body")

    def expect_message(self, text: str) -> None:
        expect(self.log_bodies().filter(has_text=text)).to_have_count(1)

    def expect_all_acked(self) -> None:
        expect(self.page.locator("[data-testid=chat-log] [data-pending=true]")).to_have_count(0)

    def messages(self) -> list[tuple[int | None, str, str, bool]]:
        return [tuple(m) for m in self.page.evaluate(CONSOLE_MESSAGES_JS)]  # type: ignore[misc]

    def close_current_chat(self) -> None:
        button = self.page.get_by_test_id("close-chat")
        button.click()  # arms the button
        button.click()  # confirms
        expect(self.page.get_by_test_id("dismiss")).to_be_visible()

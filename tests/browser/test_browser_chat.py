"""The widget and the console hold a chat in a real Chromium against a real embedded server."""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_NAME, DEMO_PASSWORD, Server, screenshot
from tests.browser.ui_pages import Console, Widget

pytestmark = pytest.mark.browser

# The scroll-back test writes 40 messages at once; the default limit (30 frames / 10 s) would
# rightly throttle that.
SERVER_ENV = {"TIDEDESK_RATE_LIMIT_PER_10S": "1000"}


def _agent(new_context: Any, server: Server) -> Console:
    return Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)


def test_visitor_and_agent_chat_both_ways(server: Server, new_context: Any) -> None:
    agent = _agent(new_context, server)
    visitor = Widget(new_context().new_page(), server.base_url).open()

    visitor.send("Hello, is the oak side table in stock?")
    # The chat reaches the console live, with an unread count, without a reload.
    item = agent.chat_items().filter(has_text="oak side table")
    expect(item).to_have_count(1)
    agent.open_chat_with("oak side table")
    agent.expect_message("Hello, is the oak side table in stock?")
    expect(visitor.host).to_have_attribute("data-state", "assigned")
    expect(visitor.page.get_by_test_id("td-status")).to_have_text(DEMO_NAME)

    # Typing indicators both ways.
    agent.composer().fill("Yes")
    expect(visitor.page.get_by_test_id("td-typing")).to_contain_text("typing")
    agent.composer().press("Enter")
    visitor.expect_message("Yes")
    visitor.page.get_by_test_id("td-input").fill("Great")
    expect(agent.page.get_by_test_id("chat-typing")).to_contain_text("typing")
    visitor.page.get_by_test_id("td-input").press("Enter")
    agent.expect_message("Great")
    expect(visitor.page.get_by_test_id("td-msg").filter(has_text="Great")).to_contain_text("Seen")

    # Canned response picked with "/" in the composer.
    agent.composer().fill("/ship")
    expect(agent.page.get_by_test_id("canned-item")).to_have_count(1)
    agent.composer().press("Enter")
    expect(agent.composer()).to_have_value(
        "Orders ship within 24 hours; you will get a tracking link by e-mail.")
    agent.composer().press("Enter")
    visitor.expect_message("Orders ship within 24 hours")

    # A private note: agents see it, the visitor never does.
    agent.page.get_by_test_id("mode-note").click()
    agent.send("VIP customer, offer free delivery")
    expect(agent.page.locator("[data-private=true]")).to_have_count(1)
    agent.page.get_by_test_id("mode-reply").click()
    agent.send("Delivery is free for you today.")
    visitor.expect_message("Delivery is free for you today.")
    expect(visitor.bodies().filter(has_text="VIP customer")).to_have_count(0)
    # The widget reports what the visitor has read; the console marks it.
    last = agent.page.get_by_test_id("chat-log").get_by_test_id("msg").last
    expect(last).to_contain_text("Seen")

    # Every message once, in seq order, on both sides.
    agent.expect_all_acked()
    expect(visitor.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(0)
    seen = visitor.messages()
    assert [body for _, _, body in seen] == [
        "Hello, is the oak side table in stock?", "Yes", "Great",
        "Orders ship within 24 hours; you will get a tracking link by e-mail.",
        "Delivery is free for you today."]
    seqs = [seq for seq, _, _ in seen]
    assert all(isinstance(s, int) for s in seqs) and seqs == sorted(set(seqs))
    console_seqs = [m[0] for m in agent.messages()]
    assert console_seqs == sorted(set(console_seqs)) and len(console_seqs) == 6

    screenshot(visitor.page, "widget-chat")
    screenshot(agent.page, "console-chat")
    agent.close_current_chat()
    expect(visitor.page.get_by_test_id("td-closed")).to_be_visible()

    # Writing again after the close starts a new conversation, which reaches the console live.
    visitor.send("Sorry, one more question")
    expect(visitor.host).to_have_attribute("data-state", "assigned")
    expect(visitor.page.get_by_test_id("td-new-conversation")).to_be_visible()
    expect(visitor.page.get_by_test_id("td-old-msg")).to_have_count(5)  # the first chat stays
    assert [body for _, _, body in visitor.messages()] == ["Sorry, one more question"]
    agent.open_chat_with("one more question")
    agent.expect_message("Sorry, one more question")
    agent.close_current_chat()


def test_offline_visitor_gets_missed_messages_once_in_order(server: Server,
                                                            new_context: Any) -> None:
    agent = _agent(new_context, server)
    visitor_ctx = new_context()
    visitor = Widget(visitor_ctx.new_page(), server.base_url).open()
    visitor.send("Hi, I am on a train")
    agent.open_chat_with("on a train")
    agent.send("Welcome aboard")
    visitor.expect_message("Welcome aboard")

    visitor_ctx.set_offline(True)
    expect(visitor.host).to_have_attribute("data-conn", "offline")
    expect(visitor.page.get_by_test_id("td-banner")).to_be_visible()
    # Written while offline: shown as pending, sent (once) after the reconnect.
    visitor.send("Tunnel!")
    expect(visitor.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(1)
    for text in ("first while away", "second while away", "third while away"):
        agent.send(text)
    agent.expect_all_acked()
    visitor.page.wait_for_timeout(500)
    expect(visitor.bodies().filter(has_text="while away")).to_have_count(0)

    visitor_ctx.set_offline(False)
    expect(visitor.host).to_have_attribute("data-conn", "online")
    visitor.expect_message("third while away")
    agent.expect_message("Tunnel!")
    expect(visitor.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(0)
    visitor.page.wait_for_timeout(300)  # anything shown twice would show up by now

    bodies = [body for _, _, body in visitor.messages()]
    assert bodies[:2] == ["Hi, I am on a train", "Welcome aboard"]
    assert sorted(bodies[2:]) == sorted(
        ["Tunnel!", "first while away", "second while away", "third while away"])
    away = [b for b in bodies if "while away" in b]
    assert away == ["first while away", "second while away", "third while away"]
    seqs = [seq for seq, _, _ in visitor.messages()]
    assert seqs == sorted(set(seqs)) and None not in seqs
    assert [b for _, _, b, _ in agent.messages()].count("Tunnel!") == 1
    agent.close_current_chat()


def test_switching_language_changes_interface_text(server: Server, new_context: Any) -> None:
    visitor = Widget(new_context().new_page(), server.base_url)
    visitor.page.goto(server.base_url + "/demo")
    visitor.page.get_by_test_id("td-launcher").click()
    title = visitor.page.get_by_test_id("td-title")
    expect(title).to_have_text("Chat with us")
    expect(visitor.page.get_by_test_id("td-send")).to_have_text("Send")
    visitor.page.get_by_test_id("td-lang").click()
    expect(title).to_have_text("在线客服")
    expect(visitor.page.get_by_test_id("td-send")).to_have_text("发送")
    expect(visitor.page.get_by_test_id("td-input")).to_have_attribute("placeholder", "输入消息…")
    screenshot(visitor.page, "widget-zh-CN")
    visitor.page.get_by_test_id("td-lang").click()
    expect(title).to_have_text("Chat with us")

    # Without data-lang the widget follows the browser's language.
    zh_ctx = new_context(locale="zh-CN")
    zh_page = zh_ctx.new_page()
    zh_page.route(server.base_url + "/plain-shop", lambda route: route.fulfill(
        content_type="text/html",
        body="<!doctype html><meta charset=utf-8><p>Shop</p><script src='/widget.js'></script>"))
    zh_page.goto(server.base_url + "/plain-shop")
    zh_page.get_by_test_id("td-launcher").click()
    expect(zh_page.get_by_test_id("td-title")).to_have_text("在线客服")

    # The console: sign-in page and the signed-in view.
    page = new_context().new_page()
    page.goto(server.base_url + "/console")
    expect(page.get_by_test_id("login-submit")).to_have_text("Sign in")
    page.get_by_test_id("login-lang").select_option("zh-CN")
    expect(page.get_by_test_id("login-submit")).to_have_text("登录")
    console = Console(page, server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    expect(page.locator("[data-i18n=myChats]")).to_have_text("我的对话")
    expect(page.get_by_test_id("conn")).to_contain_text("已连接")
    screenshot(page, "console-zh-CN")
    page.get_by_test_id("lang").select_option("en")
    expect(page.locator("[data-i18n=myChats]")).to_have_text("My chats")
    console.expect_online()


def test_agent_with_two_factor_signs_in_with_totp_step(server: Server,
                                                       new_context: Any) -> None:
    secret = server.create_agent(email="twofa@example.com", password="correct-horse-1",
                                 name="Tina Two-Factor", pools="training", totp=True)
    assert secret
    page = new_context().new_page()
    page.goto(server.base_url + "/console")
    page.get_by_test_id("login-email").fill("twofa@example.com")
    page.get_by_test_id("login-password").fill("correct-horse-1")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-totp")).to_be_visible()
    page.get_by_test_id("login-totp").fill("000000" if pyotp.TOTP(secret).now() != "000000"
                                          else "111111")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("code")
    console = Console(page, server.base_url)
    page.get_by_test_id("login-totp").fill(pyotp.TOTP(secret).now())
    page.get_by_test_id("login-submit").click()
    console.expect_online()
    expect(page.get_by_test_id("me-name")).to_have_text("Tina Two-Factor")


def test_console_reconnects_and_resumes(server: Server, new_context: Any) -> None:
    agent_ctx = new_context()
    agent = Console(agent_ctx.new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    visitor.send("Are you still there?")
    agent.open_chat_with("still there")

    agent_ctx.set_offline(True)
    expect(agent.page.get_by_test_id("conn")).to_have_attribute("data-state", "offline")
    for text in ("one", "two", "three"):
        visitor.send(f"visitor says {text}")
    expect(visitor.page.locator("tidedesk-widget [data-pending=true]")).to_have_count(0)
    agent.page.wait_for_timeout(300)
    expect(agent.log_bodies().filter(has_text="visitor says")).to_have_count(0)

    agent_ctx.set_offline(False)
    agent.expect_online()
    expect(agent.log_bodies().filter(has_text="visitor says")).to_have_count(3)
    bodies = [b for _, _, b, _ in agent.messages()]
    assert bodies == ["Are you still there?", "visitor says one", "visitor says two",
                      "visitor says three"]
    agent.send("Back again, sorry!")
    visitor.expect_message("Back again, sorry!")
    agent.close_current_chat()


def test_console_history_scrolls_back(server: Server, new_context: Any) -> None:
    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    visitor.send("message 01")
    agent.open_chat_with("message 01")
    for i in range(2, 41):
        visitor.page.evaluate("n => window.Tidedesk.send('message ' + n)", f"{i:02d}")
    agent.expect_message("message 40")

    # A fresh console (say, after a reload) shows the newest page and loads older ones on demand.
    page = new_context().new_page()
    fresh = Console(page, server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    fresh.open_chat_with("message 40")
    fresh.expect_message("message 40")
    expect(fresh.log_bodies()).to_have_count(30)
    page.get_by_test_id("load-earlier").click()
    expect(fresh.log_bodies()).to_have_count(40)
    expect(page.get_by_test_id("load-earlier")).to_have_count(0)
    bodies = [b for _, _, b, _ in fresh.messages()]
    assert bodies == [f"message {i:02d}" for i in range(1, 41)]
    fresh.close_current_chat()


def test_transfer_to_another_agent(server: Server, new_context: Any) -> None:
    server.create_agent(email="bea@example.com", password="bea-password-1", name="Bea Backup",
                        pools="general", max_chats=3)
    demo = _agent(new_context, server)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    visitor.send("Can I change my delivery address?")
    demo.open_chat_with("delivery address")
    bea = Console(new_context().new_page(), server.base_url).sign_in(
        "bea@example.com", "bea-password-1")

    demo.page.get_by_test_id("transfer").click()
    dialog = demo.page.get_by_test_id("transfer-dialog")
    expect(dialog).to_be_visible()
    target = dialog.get_by_test_id("transfer-agent").filter(has_text="Bea Backup")
    expect(target).to_contain_text("Online")
    expect(dialog.get_by_test_id("transfer-pool")).to_have_count(3)
    target.click()
    demo.page.get_by_test_id("do-transfer").click()

    # Gone from the first console, live in the second one, with its history.
    expect(demo.chat_items().filter(has_text="delivery address")).to_have_count(0)
    bea.open_chat_with("delivery address")
    bea.expect_message("Can I change my delivery address?")
    bea.send("Yes, what is the new address?")
    visitor.expect_message("Yes, what is the new address?")
    expect(visitor.page.get_by_test_id("td-status")).to_have_text("Bea Backup")
    bea.close_current_chat()


def test_console_refreshes_access_token_before_it_expires(server: Server,
                                                         new_context: Any) -> None:
    page = new_context().new_page()
    page.clock.install()
    console = Console(page, server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    before = page.evaluate("() => JSON.parse(localStorage['tidedesk.agent.session'])")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/refresh")) as answer:
        page.clock.fast_forward("14:00")  # access tokens live 15 minutes by default
    assert answer.value.status == 200
    after = page.evaluate("() => JSON.parse(localStorage['tidedesk.agent.session'])")
    assert after["issued_at"] > before["issued_at"]
    assert after["expires_at"] > before["expires_at"]
    console.expect_online()


def test_widget_keeps_its_chat_across_reloads_and_counts_unread(server: Server,
                                                              new_context: Any) -> None:
    agent = _agent(new_context, server)
    visitor = Widget(new_context().new_page(), server.base_url).open()
    visitor.send("Checking my basket")
    agent.open_chat_with("my basket")
    agent.send("Take your time")
    visitor.expect_message("Take your time")
    before = visitor.messages()

    # Same token, same conversation, same transcript (once each) after a reload.
    visitor.page.reload()
    expect(visitor.page.get_by_test_id("td-panel")).to_be_visible()  # stays open
    expect(visitor.host).to_have_attribute("data-conn", "online")
    visitor.expect_message("Take your time")
    assert visitor.messages() == before
    expect(agent.chat_items()).to_have_count(1)

    # Panel closed: replies raise the launcher's badge; opening clears it.
    visitor.page.get_by_test_id("td-close").click()
    agent.send("Your basket is saved")
    agent.send("for 24 hours")
    badge = visitor.page.get_by_test_id("td-badge")
    expect(badge).to_have_text("2")
    visitor.page.reload()  # seen nothing new yet: still two unread
    expect(visitor.page.get_by_test_id("td-badge")).to_have_text("2")
    visitor.page.get_by_test_id("td-launcher").click()
    expect(visitor.page.get_by_test_id("td-badge")).to_be_hidden()
    visitor.expect_message("for 24 hours")
    agent.close_current_chat()


def test_status_switch_reaches_the_server_and_survives_a_reload(server: Server,
                                                                new_context: Any) -> None:
    agent = _agent(new_context, server)
    page = agent.page

    def server_side_status() -> str:
        token = page.evaluate(
            "() => JSON.parse(localStorage['tidedesk.agent.session']).access_token")
        answer = page.request.get(server.base_url + "/api/v1/agents",
                                  headers={"Authorization": f"Bearer {token}"})
        return {a["name"]: a["status"] for a in answer.json()["agents"]}[DEMO_NAME]

    def wait_for_status(expected: str) -> None:
        for _ in range(200):
            if server_side_status() == expected:
                return
            page.wait_for_timeout(50)
        assert server_side_status() == expected

    wait_for_status("online")
    page.get_by_test_id("status").select_option("away")
    wait_for_status("away")
    page.reload()
    agent.expect_online()
    expect(page.get_by_test_id("status")).to_have_value("away")
    wait_for_status("away")
    page.get_by_test_id("status").select_option("online")
    wait_for_status("online")


# (name, attempt, random draw, expected delay in ms)
BACKOFF_CASES = [
    ("first retry, earliest", 0, 0.0, 250),
    ("first retry, latest", 0, 1.0, 500),
    ("fourth retry, earliest", 3, 0.0, 2000),
    ("fourth retry, middle", 3, 0.5, 3000),
    ("capped at 30 s", 6, 1.0, 30000),
    ("a huge attempt count stays capped", 1000, 0.0, 15000),
]


def test_widget_reconnect_backoff_schedule(server: Server, new_context: Any) -> None:
    """Equal jitter: a random delay in [cap/2, cap], cap = min(30 s, 0.5 s * 2^attempt)."""
    page = new_context().new_page()
    page.goto(server.base_url + "/demo")
    got = page.evaluate("cases => cases.map(([, n, r]) => window.Tidedesk._backoffMs(n, r))",
                        BACKOFF_CASES)
    wrong = [(name, expected, ms) for (name, _, _, expected), ms in zip(BACKOFF_CASES, got,
                                                                          strict=True)
             if ms != expected]
    assert not wrong, f"(case, expected ms, got ms): {wrong}"


def test_widget_with_a_stale_token_starts_over(server: Server, new_context: Any) -> None:
    """A token the server no longer accepts (close 4401) is dropped and a new visitor made."""
    ctx = new_context()
    ctx.add_init_script(
        "if (!sessionStorage.seeded) { sessionStorage.seeded = 1;"
        " localStorage.setItem('tidedesk:' + location.origin + ':token', 'not-a-valid-token'); }")
    visitor = Widget(ctx.new_page(), server.base_url).open()
    token = visitor.page.evaluate(
        "() => localStorage.getItem('tidedesk:' + location.origin + ':token')")
    assert token and token != "not-a-valid-token"


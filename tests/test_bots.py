"""Issue 16: a site's bot answers first and hands off to people, end to end with the example
FAQ bot (examples/faq_bot.py) as a real webhook receiver; and a bot that never answers is
handed off after its timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from examples.faq_bot import FaqBot, best_answer
from tests.support.clients import (
    Http,
    WsClient,
    add_agent,
    agent_socket,
    embedded,
    login,
    wait_agent_online,
    ws,
)
from tests.support.routing import GENERAL_ONLY
from tidedesk.runtime import Runtime


async def _visitor(rt: Runtime, site: str, locale: str = "en") -> WsClient:
    _, made = await Http(rt).request("POST", "/api/v1/visitors",
                                     {"site": site, "locale": locale})
    client = await ws(rt, "/ws/visitor", made["token"])
    await client.wait_type("hello")
    return client


def test_best_answer_matches_a_shortcut_word() -> None:
    canned = [{"shortcut": "shipping", "body": "Hi {{visitor.name}}, orders ship in 24 h."}]
    assert best_answer("When is SHIPPING?", canned) == "Hi , orders ship in 24 h."
    assert best_answer("I want a person", canned) is None


def test_faq_bot_answers_then_hands_off_to_a_person(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY,
                            webhook_allowed_networks=("127.0.0.0/8",)) as rt:
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            _, token = await http.request("POST", "/api/v1/api-tokens", {
                "name": "Tea Bot", "scopes": ["messages:write", "conversations:read"]},
                token=admin)
            bot = FaqBot(tidedesk=http.base, token=token["token"], secret="")
            bot.start()
            _, hook = await http.request("POST", "/api/v1/webhooks", {
                "url": f"http://127.0.0.1:{bot.port}/hook", "events": ["message.created"]},
                token=admin)
            bot.secret = hook["secret"]
            assert (await http.request("PUT", "/api/v1/sites/tea", {
                "bot": {"name": "Tea Bot", "timeout_s": 10, "pool": "general"}},
                token=admin))[0] == 200
            ann = add_agent(rt, "ann@shop.test")
            console = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            visitor = await _visitor(rt, "tea")
            await visitor.say("When does shipping happen?")  # opens the conversation
            conv = visitor.of_type("hello")[-1]["conversation_id"]
            assigned = await visitor.wait_type("assigned")
            assert assigned["agent"]["name"] == "Tea Bot"
            answer = await visitor.wait_for(lambda f: f.get("type") == "message"
                                            and f.get("from") == "agent", timeout=10)
            assert answer["name"] == "Tea Bot" and "ship within 24 hours" in answer["body"]
            assert not console.of_type("assigned")  # no agent slot taken by the bot's chat
            await visitor.say("I would like to talk to a human")
            note = await visitor.wait_for(lambda f: f.get("type") == "message"
                                          and f.get("from") == "system", timeout=10)
            assert note["body"] == "Connecting you to a person…"
            await console.wait_type("assigned", conversation_id=conv, timeout=10)
            person = await visitor.wait_for(lambda f: f.get("type") == "assigned"
                                            and f["agent"]["name"] == "ann", timeout=10)
            assert person
            status, _ = await http.request("POST", f"/api/v1/conversations/{conv}/handoff",
                                           {}, token=token["token"])
            assert status == 409  # handed off already
            await visitor.close()
            await console.close()
            bot.stop()

    asyncio.run(scenario())


def test_a_bot_that_does_not_answer_is_handed_off_after_its_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            # A bot with no receiver at all: it never answers.
            assert (await http.request("PUT", "/api/v1/sites/mute", {
                "bot": {"name": "Mute Bot", "timeout_s": 2}}, token=admin))[0] == 200
            ann = add_agent(rt, "ann@shop.test")
            console = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            visitor = await _visitor(rt, "mute", locale="zh-CN")
            await visitor.say("你好")  # opens the conversation; the bot never answers
            assert (await visitor.wait_type("assigned"))["agent"]["name"] == "Mute Bot"
            assert not console.of_type("assigned")  # the bot has it; its clock runs
            note: dict[str, Any] = await visitor.wait_for(
                lambda f: f.get("type") == "message" and f.get("from") == "system", timeout=8)
            assert note["body"] == "正在为您转接人工客服…"
            await console.wait_type("assigned", timeout=8)
            await visitor.close()
            await console.close()

    asyncio.run(scenario())

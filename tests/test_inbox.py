"""The agent's inbox against a real embedded server (SQLite): search in English and Chinese
within the searcher's rights, views with filters and cursor paging, labels, contacts with
their context, and identify."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chatnode.contacts import customer_hash
from tests.support.clients import (
    Http,
    add_agent,
    agent_socket,
    embedded,
    login,
    new_client_id,
    new_visitor,
    wait_agent_online,
)
from tests.support.routing import GENERAL_ONLY
from tests.support.waiting import wait_until_async

UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0.0.0 Safari/537.36")


async def _stored(rt: Any, conv_id: str, count: int) -> None:
    async def enough() -> bool:
        return await rt.storage.messages.count(conv_id) >= count

    await wait_until_async(f"{count} messages stored", enough, 5.0, every=0.02)


def test_search_views_labels_and_contacts_keep_to_the_searchers_rights(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            ann_id = add_agent(rt, "ann@shop.test", max_chats=1)
            add_agent(rt, "bob@shop.test")
            add_agent(rt, "sue@shop.test", role="supervisor", pools=("other",))
            http = Http(rt)
            ann_ws = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann_id)
            ann, bob, sue = [await login(rt, f"{n}@shop.test") for n in ("ann", "bob", "sue")]

            # Visitor 1 goes to Ann (her only slot); visitor 2 waits in the queue.
            v1, _, v1_ws = await new_visitor(
                rt, opening="我想退货，订单号 1234", name="张三丰", email="zhang@example.com",
                fields={"order": "A-1234"},
                context={"page_url": "https://shop.test/cart", "referrer": "https://search.test/",
                         "user_agent": UA, "tz": "Asia/Shanghai"})
            assigned = await ann_ws.wait_type("assigned")
            conv1 = assigned["conversation_id"]
            assert (await v1_ws.say("Where is my invoice?"))["type"] == "ack"
            await ann_ws.send({"type": "note", "conversation_id": conv1, "id": new_client_id(),
                               "body": "private: refund approved 退货"})
            v2, _, v2_ws = await new_visitor(rt, opening="需要开发票 please", name="Lee")
            conv2 = (await rt.storage.conversations.current_for_visitor(v2))[0].id
            await _stored(rt, conv1, 3)
            await _stored(rt, conv2, 1)

            async def search(token: str, q: str) -> dict[str, Any]:
                status, data = await http.request("GET", f"/api/v1/search?q={quote(q)}",
                                                  token=token)
                assert status == 200, data
                return data

            # Chinese two-character words, English words, notes for agents only.
            found = await search(ann, "退货")
            # The visitor's message and Ann's private note: agents search notes too.
            assert sorted((m["conversation_id"], m["from"], m["private"])
                          for m in found["messages"]) == [(conv1, "agent", True),
                                                          (conv1, "visitor", False)]
            hit = next(m for m in found["messages"] if m["from"] == "visitor")
            start, end = hit["highlights"][0]
            assert hit["snippet"][start:end] == "退货" and hit["seq"] >= 1
            assert [m["body"] for m in (await search(ann, "INVOICE"))["messages"]] == [
                "Where is my invoice?"]
            # Bob may not read Ann's chat, only the queue of his pool.
            assert (await search(bob, "退货"))["messages"] == []
            assert [m["conversation_id"] for m in (await search(bob, "发票"))["messages"]] == [
                conv2]
            assert {m["conversation_id"] for m in (await search(sue, "发票"))["messages"]} == {
                conv2}
            assert (await search(sue, "退货请"))["messages"] == []  # not neighbours
            assert [c["id"] for c in (await search(sue, "张三"))["contacts"]] == [v1]
            assert (await search(bob, "张三"))["contacts"] == []
            assert [c["id"] for c in (await search(ann, "zhang@example.com"))["contacts"]] == [v1]
            status, data = await http.request("GET", "/api/v1/search?q=", token=ann)
            assert (status, data["error"]["code"]) == (400, "invalid_query")
            status, _ = await http.request("GET", "/api/v1/search?q=退货")
            assert status == 401

            async def view(token: str, query: str) -> dict[str, Any]:
                status, data = await http.request("GET", f"/api/v1/conversations?{query}",
                                                  token=token)
                assert status == 200, data
                return data

            mine = await view(ann, "view=mine")
            assert [c["id"] for c in mine["conversations"]] == [conv1]
            item = mine["conversations"][0]
            assert item["visitor"] == {"id": v1, "name": "张三丰", "email": "zhang@example.com"}
            assert item["last_message"]["body"] == "Where is my invoice?"
            assert item["unread"] == 2
            assert [c["id"] for c in (await view(bob, "view=unassigned"))["conversations"]] == [
                conv2]
            assert (await view(bob, "view=mine"))["conversations"] == []
            assert [c["id"] for c in (await view(bob, "view=open"))["conversations"]] == [conv2]
            assert {c["id"] for c in (await view(sue, "view=open"))["conversations"]} == {
                conv1, conv2}
            assert [c["id"] for c in (await view(sue, "view=open&q=发票"))["conversations"]] == [
                conv2]
            assert (await view(sue, "view=open&pool=other"))["conversations"] == []
            assert [c["id"] for c in (await view(sue, f"view=open&agent={ann_id}"))[
                "conversations"]] == [conv1]
            # Cursor paging: two pages of one, then no cursor.
            first = await view(sue, "view=open&limit=1")
            second = await view(sue, f"view=open&limit=1&cursor={first['next_cursor']}")
            assert {first["conversations"][0]["id"], second["conversations"][0]["id"]} == {
                conv1, conv2}
            assert second["next_cursor"] is None
            status, data = await http.request("GET", "/api/v1/conversations?view=everything",
                                              token=ann)
            assert (status, data["error"]["code"]) == (400, "invalid_query")
            status, data = await http.request("GET", "/api/v1/conversations?cursor=xx",
                                              token=ann)
            assert (status, data["error"]["code"]) == (400, "invalid_query")

            # Labels: Ann labels her chat, Bob may not, the view filters by label.
            path = f"/api/v1/conversations/{conv1}/labels"
            status, data = await http.request("PUT", path, {"labels": ["退款", "vip"]}, token=ann)
            assert (status, data["labels"]) == (200, ["vip", "退款"])
            status, _ = await http.request("PUT", path, {"labels": ["x"]}, token=bob)
            assert status == 403
            status, data = await http.request("PUT", path, {"labels": "vip"}, token=ann)
            assert (status, data["error"]["code"]) == (400, "invalid_field")
            labelled = await view(sue, f"view=open&label={quote('退款')}")
            assert [c["id"] for c in labelled["conversations"]] == [conv1]
            assert labelled["conversations"][0]["labels"] == ["vip", "退款"]

            # One conversation and the contact panel.
            status, one = await http.request("GET", f"/api/v1/conversations/{conv1}", token=ann)
            assert status == 200 and one["context"]["browser"] == "Chrome 120"
            assert one["context"]["os"] == "Windows 10/11" and one["rating"] is None
            status, _ = await http.request("GET", f"/api/v1/conversations/{conv1}", token=bob)
            assert status == 403
            status, contact = await http.request("GET", f"/api/v1/contacts/{v1}", token=ann)
            assert status == 200, contact
            assert (contact["name"], contact["email"], contact["fields"]) == (
                "张三丰", "zhang@example.com", {"order": "A-1234"})
            assert contact["context"]["page_url"] == "https://shop.test/cart"
            assert [c["id"] for c in contact["conversations"]] == [conv1]
            assert (await http.request("GET", f"/api/v1/contacts/{v1}", token=bob))[0] == 403
            # Bob reads the waiting chat's history before taking it; not Ann's.
            status, _ = await http.request("GET", f"/api/v1/conversations/{conv2}/messages",
                                           token=bob)
            assert status == 200
            status, _ = await http.request("GET", f"/api/v1/conversations/{conv1}/messages",
                                           token=bob)
            assert status == 403
            for client in (ann_ws, v1_ws, v2_ws):
                await client.close()

    asyncio.run(scenario())


def test_visitor_context_is_checked_and_identify_needs_the_shops_signature(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        secret = "shop-identity-secret-0123456789"
        async with embedded(tmp_path, GENERAL_ONLY, identity_secret=secret) as rt:
            http = Http(rt)
            status, data = await http.request("POST", "/api/v1/visitors",
                                              {"context": {"page": "x"}})
            assert (status, data["error"]["code"]) == (400, "invalid_field")
            assert "page_url" in data["error"]["message"]
            status, data = await http.request("POST", "/api/v1/visitors",
                                              {"fields": {"order": 5}})
            assert (status, data["error"]["code"]) == (400, "invalid_field")
            signed = {"customer_id": "cust-42", "customer_hash": customer_hash(secret, "cust-42")}
            status, laptop = await http.request("POST", "/api/v1/visitors",
                                                {"name": "Kim", **signed})
            assert status == 201, laptop
            status, phone = await http.request(
                "POST", "/api/v1/visitors",
                {**signed, "context": {"user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 "
                                       "like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
                                       " Version/17.1 Mobile/15E148 Safari/604.1"}})
            assert status == 201 and phone["visitor_id"] == laptop["visitor_id"]
            visitor = await rt.storage.visitors.get(phone["visitor_id"])
            assert visitor is not None and visitor.context["os"] == "iOS 17"
            assert visitor.context["browser"] == "Safari 17"
            status, data = await http.request("POST", "/api/v1/visitors",
                                              {"customer_id": "cust-42",
                                               "customer_hash": customer_hash("guess", "cust-42")})
            assert (status, data["error"]["code"]) == (403, "invalid_identity")
            status, data = await http.request("POST", "/api/v1/visitors",
                                              {"customer_id": "cust-42"})
            assert (status, data["error"]["code"]) == (400, "invalid_field")
        (tmp_path / "plain").mkdir()
        async with embedded(tmp_path / "plain", GENERAL_ONLY) as rt:
            status, data = await Http(rt).request("POST", "/api/v1/visitors", signed)
            assert (status, data["error"]["code"]) == (400, "identify_not_configured")

    asyncio.run(scenario())


def test_report_summary_and_chart_for_supervisors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            ann_id = add_agent(rt, "ann@shop.test")
            add_agent(rt, "sue@shop.test", role="supervisor")
            http = Http(rt)
            ann_ws = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann_id)
            _, _, v_ws = await new_visitor(rt, name="Kim")
            conv = (await ann_ws.wait_type("assigned"))["conversation_id"]
            assert (await v_ws.say("hello, where is my parcel?"))["type"] == "ack"
            await asyncio.sleep(0.3)
            assert (await ann_ws.say("It ships today", conversation_id=conv))["type"] == "ack"
            await ann_ws.send({"type": "close", "conversation_id": conv})
            await v_ws.wait_type("state", state="closed")
            await _stored(rt, conv, 2)
            sue = await login(rt, "sue@shop.test")
            status, data = await http.request("GET", "/api/v1/reports/summary", token=sue)
            assert status == 200, data
            assert data["conversations"] == 1 and sum(
                h["conversations"] for h in data["by_hour"]) == 1 and len(data["by_hour"]) == 24
            assert 0.3 <= data["first_response_s"]["p50"] < 10
            assert data["resolution_s"]["p90"] is not None
            assert data["rating"] == {"average": None, "count": 0}  # nobody rated yet
            # The visitor rates the closed chat; reports by site count it in its own site only.
            await v_ws.send({"type": "rating", "score": 4})
            await v_ws.wait_type("rated")
            for site, count, rating in (("default", 1, {"average": 4.0, "count": 1}),
                                        ("shop", 0, {"average": None, "count": 0})):
                status, data = await http.request(
                    "GET", f"/api/v1/reports/summary?site={site}", token=sue)
                assert status == 200, data
                assert (data["conversations"], data["rating"]) == (count, rating), site
            status, data = await http.request("GET", "/api/v1/reports/summary?from=2026-12-02"
                                              "&to=2026-12-01", token=sue)
            assert (status, data["error"]["code"]) == (400, "invalid_query")
            status, svg = await http.request("GET", "/api/v1/reports/by_hour.svg", token=sue)
            assert status == 200 and svg.startswith("<svg") and svg.count("<rect") == 25
            ann = await login(rt, "ann@shop.test")
            assert (await http.request("GET", "/api/v1/reports/summary", token=ann))[0] == 403
            for client in (ann_ws, v_ws):
                await client.close()

    asyncio.run(scenario())

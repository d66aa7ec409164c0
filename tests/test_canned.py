"""Issue 16: canned responses over REST: shared (admins) and personal, shortcut clashes and
unknown variables refused with what to change, every change audited."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.clients import Http, add_agent, embedded, login
from tests.support.routing import GENERAL_ONLY


def test_canned_responses_shared_personal_and_checked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "ann@shop.test")
            add_agent(rt, "bob@shop.test")
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            ann, bob = await login(rt, "ann@shop.test"), await login(rt, "bob@shop.test")
            status, made = await http.request("POST", "/api/v1/canned", {
                "shortcut": "/refund", "body": "Hi {{visitor.name}}, {{agent.name}} here: "
                "your refund is on its way."}, token=admin)
            assert status == 201 and made["shortcut"] == "refund" and not made["personal"]
            status, err = await http.request("POST", "/api/v1/canned", {
                "shortcut": "refund", "body": "again"}, token=admin)
            assert (status, err["error"]["code"]) == (400, "shortcut_taken")
            assert "/refund is taken" in err["error"]["message"]
            status, err = await http.request("POST", "/api/v1/canned", {
                "shortcut": "bye", "body": "Bye {{visitor.nick}}"}, token=admin)
            assert status == 400 and "{{visitor.name}}" in err["error"]["message"]
            status, err = await http.request("POST", "/api/v1/canned", {
                "shortcut": "Bad One", "body": "x"}, token=admin)
            assert status == 400 and "'shortcut'" in err["error"]["message"]
            # Agents add their own, not shared ones, and see only their own beside the shared.
            status, _ = await http.request("POST", "/api/v1/canned",
                                           {"shortcut": "mine", "body": "x"}, token=ann)
            assert status == 403
            status, mine = await http.request("POST", "/api/v1/canned", {
                "shortcut": "mine", "body": "Ann's line", "personal": True}, token=ann)
            assert status == 201 and mine["personal"]
            _, listed = await http.request("GET", "/api/v1/canned", token=bob)
            assert "mine" not in {c["shortcut"] for c in listed["canned"]}
            assert "refund" in {c["shortcut"] for c in listed["canned"]}
            _, listed = await http.request("GET", "/api/v1/canned", token=ann)
            assert {"mine", "refund"} <= {c["shortcut"] for c in listed["canned"]}
            assert (await http.request("PUT", f"/api/v1/canned/{mine['id']}", {"body": "y"},
                                       token=bob))[0] == 404
            assert (await http.request("PUT", f"/api/v1/canned/{made['id']}", {"body": "y"},
                                       token=ann))[0] == 403
            status, changed = await http.request("PUT", f"/api/v1/canned/{mine['id']}",
                                                 {"body": "Ann's new line"}, token=ann)
            assert status == 200 and changed["body"] == "Ann's new line"
            status, _ = await http.request("DELETE", f"/api/v1/canned/{made['id']}", token=admin)
            assert status == 200
            _, audit = await http.request("GET", "/api/v1/audit?action=admin.canned", token=admin)
            assert [e["action"] for e in audit["entries"]] == [
                "admin.canned.delete", "admin.canned.update", "admin.canned.create",
                "admin.canned.create"]

    asyncio.run(scenario())


def test_admin_edits_and_deactivates_an_agent_at_once(tmp_path: Path) -> None:
    from tests.support.clients import agent_socket, wait_agent_online

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            ann_id = add_agent(rt, "ann@shop.test")
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            ann = await login(rt, "ann@shop.test")
            console = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann_id)
            status, err = await http.request("PUT", f"/api/v1/agents/{ann_id}",
                                             {"max_chats": 99}, token=admin)
            assert status == 400 and "'max_chats'" in err["error"]["message"]
            assert (await http.request("PUT", f"/api/v1/agents/{ann_id}", {"name": "x"},
                                       token=ann))[0] == 403
            status, changed = await http.request("PUT", f"/api/v1/agents/{ann_id}", {
                "name": "Ann B", "pools": ["general", "vip"], "max_chats": 5}, token=admin)
            assert status == 200 and changed["pools"] == ["general", "vip"]
            status, _ = await http.request("PUT", f"/api/v1/agents/{ann_id}",
                                           {"active": False}, token=admin)
            assert status == 200
            code, _ = await asyncio.wait_for(console.closed, 5)
            assert code == 4401
            status, err = await http.request("GET", "/api/v1/me", token=ann)
            assert status == 401
            status, _ = await http.request("POST", "/api/v1/auth/login",
                                           {"email": "ann@shop.test", "password": "password1"})
            assert status == 401

            async def offline() -> bool:
                load = await rt.store.agent_get(ann_id)
                return load is not None and load.status == "offline"

            from tests.support.waiting import wait_until_async
            await wait_until_async("ann offline at the router", offline, 5)

    asyncio.run(scenario())


def test_an_invited_agent_sets_a_password_once_then_signs_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            status, invite = await http.request("POST", "/api/v1/agents/invite", {
                "email": "Nia@shop.test", "name": "Nia", "pools": ["general", "tea"]},
                token=admin)
            assert status == 201 and invite["invite_url"].startswith("/console#invite=")
            assert (await http.request("POST", "/api/v1/agents/invite",
                                       {"email": "nia@shop.test"}, token=admin))[0] == 409
            token = invite["invite_url"].split("=", 1)[1]
            status, err = await http.request("POST", "/api/v1/auth/accept-invite",
                                             {"token": token, "password": "short"})
            assert status == 400 and "10-1024" in err["error"]["message"]
            status, _ = await http.request("POST", "/api/v1/auth/accept-invite",
                                           {"token": token, "password": "a long password"})
            assert status == 200
            status, _ = await http.request("POST", "/api/v1/auth/accept-invite",
                                           {"token": token, "password": "another password"})
            assert status == 401  # spent
            nia = await login(rt, "nia@shop.test", "a long password")
            _, me = await http.request("GET", "/api/v1/me", token=nia)
            assert me["pools"] == ["general", "tea"] and me["role"] == "agent"

    asyncio.run(scenario())

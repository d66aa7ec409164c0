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

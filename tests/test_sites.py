"""Issue 16: several sites (shops) on one installation: settings checked and stored, the
public widget configuration, and each site's own rules and hours."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Http, add_agent, agent_socket, embedded, login, ws
from tests.support.routing import GENERAL_ONLY
from tidedesk import sites


def run(coro: Any) -> None:
    asyncio.run(coro)


@pytest.mark.parametrize(("update", "names"), [
    ({"color": "teal"}, "#0f766e"),
    ({"position": "top"}, "bottom-right, bottom-left"),
    ({"languages": ["fr"]}, "en, zh-CN"),
    ({"business_hours": {"timezone": "Mars/Olympus", "open": "09:00", "close": "17:00"}},
     "IANA"),
    ({"business_hours": {"timezone": "UTC", "open": "9", "close": "17:00"}}, "HH:MM"),
    ({"routing": {"rules": [{"pool": "a"}, {"pool": "b", "match": {"tags": ["x"]}}]}},
     "can never match"),
    ({"routing": {"rules": [{"name": "r", "pool": "a", "match": {"tags": ["x"]}},
                            {"name": "r", "pool": "b"}]}}, "two rules are named"),
    ({"routing": {"rules": []}}, "routing.rules"),
    ({"prechat_fields": [{"name": "Order No", "label": "Order"}]}, "a-z 0-9 _"),
    ({"colour": "#fff"}, "allowed: name, color"),
])
def test_bad_settings_name_the_field(update: dict[str, Any], names: str) -> None:
    with pytest.raises(sites.SiteError, match=names):
        sites.merge(sites.defaults("shop"), update)


def test_merge_keeps_what_a_put_leaves_out() -> None:
    first = sites.merge(sites.defaults("shop"), {"color": "#FA0", "greeting": "Hi"})
    second = sites.merge(first, {"position": "bottom-left"})
    assert (second["color"], second["greeting"], second["position"]) == \
        ("#fa0", "Hi", "bottom-left")


def test_sites_are_stored_served_to_widgets_and_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "agent@shop.test")
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            status, err = await http.request("PUT", "/api/v1/sites/tea", {"color": "red"},
                                             token=admin)
            assert status == 400 and "'color'" in err["error"]["message"]
            status, err = await http.request("PUT", "/api/v1/sites/tea",
                                             {"routing": "rules: [unclosed"}, token=admin)
            assert status == 400 and "YAML" in err["error"]["message"]
            status, _ = await http.request("PUT", "/api/v1/sites/tea", {},
                                           token=await login(rt, "agent@shop.test"))
            assert status == 403
            # Unknown until created; then public and cacheable; a change shows at once.
            status, err = await http.request("GET", "/api/v1/sites/tea/widget-config")
            assert (status, err["error"]["code"]) == (404, "site_unavailable")
            status, saved = await http.request("PUT", "/api/v1/sites/tea", {
                "name": "Tea Shop", "color": "#aa3300", "greeting": "Hello tea lover",
                "prechat_fields": [{"name": "order", "label": "Order number"}]}, token=admin)
            assert status == 200 and saved["color"] == "#aa3300"
            resp = await http.client.fetch(f"{http.base}/api/v1/sites/tea/widget-config")
            assert resp.headers["Cache-Control"] == "public, max-age=30"
            _, config = await http.request("GET", "/api/v1/sites/tea/widget-config")
            assert config["name"] == "Tea Shop" and config["open"] is True
            assert "routing" not in config and config["prechat_fields"][0]["required"] is False
            await http.request("PUT", "/api/v1/sites/tea", {"color": "#112233"}, token=admin)
            _, config = await http.request("GET", "/api/v1/sites/tea/widget-config")
            assert (config["color"], config["greeting"]) == ("#112233", "Hello tea lover")
            _, listed = await http.request("GET", "/api/v1/sites", token=admin)
            assert [s["site"] for s in listed["sites"]] == ["default", "tea"]
            # Visitors name their site; an unknown one is refused.
            status, err = await http.request("POST", "/api/v1/visitors", {"site": "nope"})
            assert status == 400 and "'site'" in err["error"]["message"]
            assert (await http.request("POST", "/api/v1/visitors", {"site": "tea"}))[0] == 201
            status, _ = await http.request("DELETE", "/api/v1/sites/tea", token=admin)
            assert status == 200
            status, err = await http.request("GET", "/api/v1/sites/tea/widget-config")
            assert (status, err["error"]["code"]) == (404, "site_unavailable")
            _, audit = await http.request("GET", "/api/v1/audit?action=admin.site", token=admin)
            assert {e["action"] for e in audit["entries"]} == {"admin.site.update",
                                                               "admin.site.delete"}

    run(scenario())


def test_two_sites_with_their_own_rules_and_hours_route_to_their_own_pools(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            today = dt.datetime.now(dt.UTC).date().isoformat()
            everyday = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            assert (await http.request("PUT", "/api/v1/sites/tea", {
                "routing": "rules:\n  - name: all\n    pool: tea\n",
                "business_hours": {"timezone": "UTC", "days": everyday, "open": "00:00",
                                   "close": "23:59"}}, token=admin))[0] == 200
            assert (await http.request("PUT", "/api/v1/sites/coffee", {
                "routing": {"rules": [{"name": "all", "pool": "coffee"}]},
                "business_hours": {"timezone": "UTC", "days": everyday, "open": "00:00",
                                   "close": "23:59", "holidays": [today]}}, token=admin))[0] \
                == 200
            tea_id = add_agent(rt, "tess@shop.test", pools=("tea",))
            add_agent(rt, "cole@shop.test", pools=("coffee",), max_chats=0)
            tess = await agent_socket(rt, "tess@shop.test")
            cole = await agent_socket(rt, "cole@shop.test")

            async def visit(site: str) -> Any:
                _, made = await http.request("POST", "/api/v1/visitors", {"site": site})
                client = await ws(rt, "/ws/visitor", made["token"])
                await client.wait_type("hello")
                await client.say("Hello")  # the first message opens the conversation
                return client

            from tests.support.clients import wait_agent_online
            await wait_agent_online(rt, tea_id)
            tea_visitor = await visit("tea")
            conv = tea_visitor.of_type("hello")[-1]["conversation_id"]
            await tess.wait_type("assigned", conversation_id=conv)
            assert (await rt.storage.conversations.get(conv)).site == "tea"  # type: ignore
            coffee_visitor = await visit("coffee")
            await coffee_visitor.wait_type("state", state="offline")  # a holiday there
            coffee_conv = coffee_visitor.of_type("hello")[-1]["conversation_id"]
            stored = await rt.storage.conversations.get(coffee_conv)
            assert stored is not None and (stored.site, stored.pool) == ("coffee", "coffee")
            _, config = await http.request("GET", "/api/v1/sites/coffee/widget-config")
            assert config["open"] is False
            for client in (tea_visitor, coffee_visitor, tess, cole):
                await client.close()

    run(scenario())


def _downgrade_and_upgrade(url: str) -> list[tuple[str, str]]:
    """Drop the site columns (a database of the previous version, with a visitor in it),
    migrate, and read the sites back."""
    from tidedesk.storage import Storage

    storage = Storage([url], pool_size=1)
    try:
        storage.migrate_all()
        db = storage.main.db
        for table in ("visitor", "conversation"):
            db.execute_sql(f"DROP INDEX {table}_site" + (f" ON {table}" if "mysql" in url
                                                          else ""))
            db.execute_sql(f"ALTER TABLE {table} DROP COLUMN site")
        db.execute_sql("INSERT INTO visitor (id, name, tags, locale, created_at) "
                       "VALUES ('old', '', '', 'en', 0)")
        storage.migrate_all()
        storage.migrate_all()  # idempotent
        # A process of the previous version still inserts without the column.
        db.execute_sql("INSERT INTO visitor (id, name, tags, locale, created_at) "
                       "VALUES ('older', '', '', 'en', 0)")
        rows = db.execute_sql("SELECT id, site FROM visitor WHERE site = 'default' "
                              "ORDER BY id").fetchall()
        if "sqlite" in url:
            assert db.execute_sql("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [tuple(r) for r in rows]
    finally:
        storage.close()


def test_an_older_sqlite_database_gets_the_site_columns(tmp_path: Path) -> None:
    assert _downgrade_and_upgrade(f"sqlite:///{tmp_path}/old.db") == [("old", "default"),
                                                                      ("older", "default")]


@pytest.mark.mariadb
def test_an_older_mariadb_database_gets_the_site_columns() -> None:
    from tests.support.mariadb import databases

    with databases(1) as urls:
        assert _downgrade_and_upgrade(urls[0]) == [("old", "default"), ("older", "default")]


def test_site_pools_decide_who_sees_a_site() -> None:
    from chatnode.access import hidden_sites, may_read, site_allows

    tea, coffee = frozenset({"tea"}), frozenset({"coffee", "barista"})
    assert site_allows("agent", ("tea",), tea) and not site_allows("agent", ("tea",), coffee)
    assert site_allows("agent", ("barista",), coffee) and site_allows("supervisor", (), coffee)
    assert site_allows("agent", ("tea",), None)  # the default site: pools alone decide
    assert hidden_sites("agent", ("tea",), {"tea": tea, "coffee": coffee}) == ("coffee",)
    assert hidden_sites("admin", ("tea",), {"tea": tea, "coffee": coffee}) == ()
    # A waiting chat of the agent's pool but another site is not theirs; their own is.
    assert not may_read("agent", "a1", ("tea",), "offline", "tea", None, coffee)
    assert may_read("agent", "a1", ("tea",), "assigned", "tea", "a1", coffee)


def test_agents_see_only_the_sites_of_their_pools(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            http = Http(rt)
            admin = await login(rt, "demo@tidedesk.local", "tidedesk-demo")
            today = dt.datetime.now(dt.UTC).date().isoformat()
            for site in ("tea", "coffee"):  # closed today: every chat becomes a ticket
                assert (await http.request("PUT", f"/api/v1/sites/{site}", {
                    "routing": {"rules": [{"name": "all", "pool": site}]},
                    "business_hours": {"timezone": "UTC", "open": "00:00", "close": "23:59",
                                       "holidays": [today]}}, token=admin))[0] == 200
            add_agent(rt, "tess@shop.test", pools=("tea",))
            add_agent(rt, "sue@shop.test", pools=("general",), role="supervisor")
            tess, sue = await login(rt, "tess@shop.test"), await login(rt, "sue@shop.test")

            async def ticket(site: str, words: str) -> tuple[str, str]:
                _, made = await http.request("POST", "/api/v1/visitors", {"site": site})
                client = await ws(rt, "/ws/visitor", made["token"])
                await client.wait_type("hello")
                await client.say(words)
                await client.wait_type("state", state="offline")
                conv = client.of_type("hello")[-1]["conversation_id"]
                await client.close()
                return conv, made["visitor_id"]

            tea_conv, _ = await ticket("tea", "oolong question")
            coffee_conv, coffee_visitor = await ticket("coffee", "oolong espresso")
            # The coffee ticket moved to the tea pool (as a transfer leaves it): its pool is
            # Tess's but its site is not, so she does not see it.
            rt.storage.main.db.execute_sql("UPDATE conversation SET pool = 'tea' WHERE id = ?",
                                           (coffee_conv,))

            async def listed(token: str, query: str) -> set[str]:
                _, page = await http.request("GET", f"/api/v1/conversations?{query}",
                                             token=token)
                return {c["id"] for c in page["conversations"]}

            for view in ("view=tickets", "view=open", "view=open&q=oolong"):
                assert await listed(tess, view) == {tea_conv}, view
                assert await listed(sue, view) >= {tea_conv, coffee_conv}, view
            assert await listed(sue, "view=tickets&site=coffee") == {coffee_conv}
            _, page = await http.request("GET", "/api/v1/conversations?view=tickets&site=tea",
                                         token=sue)
            assert [c["site"] for c in page["conversations"]] == ["tea"]
            assert await listed(tess, "view=tickets&site=coffee") == set()
            for path in (f"/api/v1/conversations/{coffee_conv}",  # one, history, contact
                         f"/api/v1/conversations/{coffee_conv}/messages",
                         f"/api/v1/contacts/{coffee_visitor}"):
                assert (await http.request("GET", path, token=tess))[0] == 403, path
                assert (await http.request("GET", path, token=sue))[0] == 200, path
            assert (await http.request("GET", f"/api/v1/conversations/{tea_conv}",
                                       token=tess))[0] == 200
            status, err = await http.request("POST", f"/api/v1/conversations/{coffee_conv}/take",
                                             {}, token=tess)
            assert status == 403 and "'coffee'" in err["error"]["message"]

            async def found(token: str) -> set[str]:
                _, hits = await http.request("GET", "/api/v1/search?q=oolong", token=token)
                return {m["conversation_id"] for m in hits["messages"]}

            for _ in range(50):  # the search index follows the stored messages
                if await found(sue) >= {tea_conv, coffee_conv}:
                    break
                await asyncio.sleep(0.1)
            assert await found(sue) >= {tea_conv, coffee_conv}
            assert await found(tess) == {tea_conv}

    run(scenario())

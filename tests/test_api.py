"""REST API behaviour: sign-in with TOTP, refresh, roles, OpenAPI matches the routes,
readiness and draining, metrics."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pyotp

from chatnode.openapi import openapi_document
from tests.support.clients import (
    Http,
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
)
from tests.support.routing import GENERAL_ONLY
from tidedesk.crypto import FieldCipher


def test_totp_sign_in_and_refresh(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            secret = pyotp.random_base32()
            add_agent(rt, "ivy@shop.test", totp_secret=secret)
            http = Http(rt)
            creds = {"email": "ivy@shop.test", "password": "password1"}
            status, data = await http.request("POST", "/api/v1/auth/login", creds)
            assert (status, data["error"]["code"]) == (401, "totp_required")
            status, data = await http.request("POST", "/api/v1/auth/login",
                                              {**creds, "totp": "000000"})
            wrong = "000000" != pyotp.TOTP(secret).now()
            assert not wrong or (status, data["error"]["code"]) == (401, "invalid_totp")
            status, tokens = await http.request("POST", "/api/v1/auth/login",
                                                {**creds, "totp": pyotp.TOTP(secret).now()})
            assert status == 200 and tokens["expires_in"] == rt.settings.access_token_ttl_s
            status, me = await http.request("GET", "/api/v1/me", token=tokens["access_token"])
            assert status == 200 and me["email"] == "ivy@shop.test" and me["totp"] is True
            # A refresh token is not an access token, and vice versa.
            assert (await http.request("GET", "/api/v1/me",
                                       token=tokens["refresh_token"]))[0] == 401
            status, again = await http.request("POST", "/api/v1/auth/refresh",
                                               {"refresh_token": tokens["refresh_token"]})
            assert status == 200 and again["access_token"]
            status, _ = await http.request("POST", "/api/v1/auth/refresh",
                                           {"refresh_token": tokens["access_token"]})
            assert status == 401

    asyncio.run(scenario())


def test_password_guessing_is_slowed_then_locked_per_account(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, login_lock_after=4) as rt:
            add_agent(rt, "pat@shop.test")
            add_agent(rt, "quinn@shop.test")
            http = Http(rt)
            wrong = {"email": "pat@shop.test", "password": "guess"}
            right = {**wrong, "password": "password1"}
            for _ in range(3):  # two free failures, the third starts the delays
                assert (await http.request("POST", "/api/v1/auth/login", wrong))[0] == 401
            status, data = await http.request("POST", "/api/v1/auth/login", right)
            assert status == 429 and data["error"]["code"] == "rate_limited", data
            await asyncio.sleep(1.05)  # the first delay is 1 s
            assert (await http.request("POST", "/api/v1/auth/login", wrong))[0] == 401
            # Four failures: locked, even with the right password.
            status, data = await http.request("POST", "/api/v1/auth/login", right)
            assert status == 429 and data["error"]["code"] == "account_locked", data
            # Other accounts are not affected.
            assert await login(rt, "quinn@shop.test")
            _, audit = await http.request("GET", "/api/v1/audit?action=auth.",
                                          token=await login(rt, "quinn@shop.test"))
            assert audit["error"]["code"] == "forbidden"  # an agent is not an admin

    asyncio.run(scenario())


def test_supervisor_overview_needs_the_role(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            jo_id = add_agent(rt, "jo@shop.test", max_chats=1)
            add_agent(rt, "boss@shop.test", role="supervisor")
            jo = await agent_socket(rt, "jo@shop.test")
            await wait_agent_online(rt, jo_id)
            _, _, v1 = await new_visitor(rt, name="first")
            await v1.wait_type("assigned")
            _, _, v2 = await new_visitor(rt, name="second", tags=["vip"])
            await v2.wait_type("queue")
            http = Http(rt)
            status, _ = await http.request("GET", "/api/v1/supervisor/overview",
                                           token=await login(rt, "jo@shop.test"))
            assert status == 403
            status, data = await http.request("GET", "/api/v1/supervisor/overview",
                                              token=await login(rt, "boss@shop.test"))
            assert status == 200
            assert data["counts"] == {"online_agents": 1, "open_conversations": 1, "waiting": 1}
            waiting = data["queues"]["general"]
            assert [(w["visitor_name"], w["vip"]) for w in waiting] == [("second", True)]
            for c in (v1, v2, jo):
                await c.close()

    asyncio.run(scenario())


def test_openapi_describes_exactly_the_rest_routes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            assert rt.node is not None
            app = rt.node.make_app()
            routed = set()
            for rule in app.wildcard_router.rules:
                pattern = rule.matcher.regex.pattern.rstrip("$")
                if pattern.startswith(("/api/", "/healthz", "/readyz", "/metrics")):
                    path = re.sub(r"\([^)]*\)", "{id}", pattern)
                    routed.add(path)
                    assert rule.target.route == path  # its rules in chatnode.routes.REST
            documented = set(openapi_document()["paths"])
            assert routed == documented
            status, served = await Http(rt).request("GET", "/api/v1/openapi.json")
            assert status == 200 and set(served["paths"]) == documented

    asyncio.run(scenario())


def test_readiness_and_drain_tell_clients_to_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            http = Http(rt)
            assert (await http.request("GET", "/healthz"))[0] == 200
            assert (await http.request("GET", "/readyz"))[0] == 200
            kim_id = add_agent(rt, "kim@shop.test")
            agent = await agent_socket(rt, "kim@shop.test")
            await wait_agent_online(rt, kim_id)
            _, _, visitor = await new_visitor(rt)
            await visitor.wait_type("assigned")
            assert rt.node is not None
            drain = asyncio.create_task(rt.node.drain(spread_s=0.5, timeout_s=3))
            for client in (visitor, agent):
                frame = await client.wait_type("reconnect")
                assert 0 <= frame["after_ms"] <= 500
            status, body = await http.request("GET", "/readyz")
            assert status == 503 and body["reason"] == "draining"
            await asyncio.wait_for(drain, 6)
            assert (await asyncio.wait_for(visitor.closed, 3))[0] == 1012
            assert rt.node.hub.count() == 0

    asyncio.run(scenario())


def test_metrics_are_prometheus_text_with_tidedesk_names(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            lu_id = add_agent(rt, "lu@shop.test")
            agent = await agent_socket(rt, "lu@shop.test")
            await wait_agent_online(rt, lu_id)
            _, _, visitor = await new_visitor(rt)
            await visitor.wait_type("assigned")
            await visitor.say("metrics please")
            await agent.wait_type("message")
            status, text = await Http(rt).request("GET", "/metrics")
            assert status == 200
            assert "tidedesk_messages_stored_total" in text
            assert "tidedesk_delivery_latency_seconds_bucket" in text
            assert re.search(r'tidedesk_connections\{role="visitor"\} [1-9]', text)
            await visitor.close()
            await agent.close()

    asyncio.run(scenario())


def test_visitor_email_is_encrypted_at_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            status, data = await Http(rt).request("POST", "/api/v1/visitors",
                                                  {"email": "vera@example.com"})
            assert status == 201
            row = await rt.storage.visitors.get(data["visitor_id"])
            assert "vera" not in row.email_enc
            cipher = FieldCipher(rt.settings.aes_key)
            assert cipher.decrypt(row.email_enc, "visitor.email") == "vera@example.com"
            assert cipher.decrypt(row.email_enc, "other.field") is None  # bound to its field

    asyncio.run(scenario())


def test_cors_lets_allowed_shop_sites_create_visitors(tmp_path: Path) -> None:
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY,
                            allowed_origins="https://shop.example") as rt:
            client = AsyncHTTPClient()
            url = f"http://127.0.0.1:{rt.port}/api/v1/visitors"

            async def preflight(origin: str) -> Any:
                return await client.fetch(HTTPRequest(url, method="OPTIONS", headers={
                    "Origin": origin, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type"}), raise_error=False)

            ok: Any = await preflight("https://shop.example")
            assert ok.code == 204
            assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            assert "POST" in ok.headers["Access-Control-Allow-Methods"]
            evil: Any = await preflight("https://evil.example")
            assert "Access-Control-Allow-Origin" not in evil.headers
            created = await client.fetch(HTTPRequest(
                url, method="POST", body="{}", headers={"Origin": "https://shop.example"}))
            assert created.code == 201
            assert created.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            # The whole REST API answers allowed sites (bearer tokens, no cookies) ...
            me: Any = await client.fetch(HTTPRequest(
                url.replace("visitors", "me"), method="OPTIONS", headers={
                    "Origin": "https://shop.example", "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization"}), raise_error=False)
            assert me.code == 204 and "Authorization" in me.headers["Access-Control-Allow-Headers"]
            refused = await client.fetch(HTTPRequest(url.replace("visitors", "me"), headers={
                "Origin": "https://shop.example"}), raise_error=False)
            assert refused.code == 401  # and the page may read why
            assert refused.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            # ... and probes are no API.
            probe: Any = await client.fetch(HTTPRequest(
                url.replace("/api/v1/visitors", "/healthz"), method="OPTIONS",
                headers={"Origin": "https://shop.example"}), raise_error=False)
            assert probe.code == 405 and "Access-Control-Allow-Origin" not in probe.headers

    asyncio.run(scenario())

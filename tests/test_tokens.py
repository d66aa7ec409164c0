"""Tokens out of URLs and logs (issue 18): one-time WebSocket tickets, the v1 ``?token=``
scrubbed from every log line, and the console's theft report."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.clients import Http, WsClient, add_agent, embedded, ws
from tests.support.routing import GENERAL_ONLY
from tidedesk import logs
from tidedesk.storage.records import as_dicts


def run(coro: Any) -> None:
    asyncio.run(coro)


async def ticket_socket(rt: Any, path: str, ticket: str) -> WsClient:
    return WsClient(await connect(f"ws://127.0.0.1:{rt.port}{path}?ticket={ticket}"))


def test_a_ticket_opens_one_socket_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "ada@shop.test")
            http = Http(rt)
            _, tokens = await http.request("POST", "/api/v1/auth/login",
                                           {"email": "ada@shop.test", "password": "password1"})
            status, t = await http.request("POST", "/api/v1/ws-ticket", {},
                                           token=tokens["access_token"])
            assert status == 201 and t["expires_in"] == 30
            agent = await ticket_socket(rt, "/ws/agent", t["ticket"])
            await agent.wait_type("hello")
            again = await ticket_socket(rt, "/ws/agent", t["ticket"])
            closed = await asyncio.wait_for(again.closed, 5)
            assert closed == (4401, "invalid_ticket")
            unknown = await ticket_socket(rt, "/ws/agent", "nope")
            assert (await asyncio.wait_for(unknown.closed, 5))[0] == 4401
            # A visitor's ticket opens the visitor's socket.
            _, v = await http.request("POST", "/api/v1/visitors", {})
            _, vt = await http.request("POST", "/api/v1/ws-ticket", {}, token=v["token"])
            visitor = await ticket_socket(rt, "/ws/visitor", vt["ticket"])
            await visitor.wait_type("hello")
            # No ticket without a valid token.
            assert (await http.request("POST", "/api/v1/ws-ticket", {}))[0] == 401
            await agent.close()
            await visitor.close()

    run(scenario())


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Our own log set-up (what `tidedesk dev` and the chat nodes run), into a buffer, at DEBUG
    so every access line is written; the previous set-up comes back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("tornado.access").level
    buf = io.StringIO()
    logs.configure("DEBUG", "json", node_id="t", stream=buf)
    try:
        yield buf
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("tornado.access").setLevel(saved[2])


def test_no_token_reaches_a_log_line(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    async def scenario(buf: io.StringIO) -> list[str]:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "ada@shop.test")
            http = Http(rt)
            _, tokens = await http.request("POST", "/api/v1/auth/login",
                                           {"email": "ada@shop.test", "password": "password1"})
            access, refresh = tokens["access_token"], tokens["refresh_token"]
            _, v = await http.request("POST", "/api/v1/visitors", {})
            # v1 sockets with the token in the URL: accepted, and refused (bad origin: 403,
            # Tornado logs the URL of every 4xx at WARNING).
            agent = await ws(rt, "/ws/agent", access)
            await agent.wait_type("hello")
            try:
                await ws(rt, "/ws/visitor", v["token"], origin="https://evil.test")
            except InvalidStatus as exc:
                assert exc.response.status_code == 403
            else:
                raise AssertionError("a foreign origin was let in")
            # Tokens where they do not belong: a 404 and a 401 with them in the query.
            await http.request("GET", f"/api/v1/nowhere?token={access}")
            await http.request("GET", f"/api/v1/me?token={access}&refresh_token={refresh}")
            await http.request("POST", "/api/v1/auth/refresh", {"refresh_token": refresh})
            await agent.close()
            return [access, refresh, v["token"]]

    keep = Keep()
    with captured_logs() as buf:
        logging.getLogger().addHandler(keep)
        secrets = asyncio.run(scenario(buf))
    text = buf.getvalue()
    assert "/ws/agent?token=[redacted]" in text and "/ws/visitor?token=[redacted]" in text
    for secret in secrets:
        assert secret not in text
        # The access log record itself holds no token (tornado.access is scrubbed at source,
        # for any handler a deployment adds).
        for record in records:
            if record.name == "tornado.access":
                assert secret not in record.getMessage()
    assert any(r.name == "tornado.access" and r.levelno == logging.WARNING for r in records)


def test_scrub() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    assert logs.scrub(f"GET /ws/agent?lang=en&token={jwt} (::1)") == \
        "GET /ws/agent?lang=en&token=[redacted] (::1)"
    assert logs.scrub(f"Bearer {jwt}") == "Bearer [redacted]"
    assert logs.scrub("/ws/visitor?ticket=abc&x=1") == "/ws/visitor?ticket=[redacted]&x=1"
    assert logs.scrub("tokens=3 broken") == "tokens=3 broken"


def test_a_theft_report_ends_the_sign_in_and_is_audited(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "ada@shop.test")
            http = Http(rt)
            _, owner = await http.request("POST", "/api/v1/auth/login",
                                          {"email": "ada@shop.test", "password": "password1"})
            # The thief spends the refresh token first; the owner's console then gets
            # token_rotated, finds no sibling tab with newer tokens, and reports.
            _, thief = await http.request("POST", "/api/v1/auth/refresh",
                                          {"refresh_token": owner["refresh_token"]})
            status, data = await http.request("POST", "/api/v1/auth/refresh",
                                              {"refresh_token": owner["refresh_token"]})
            assert (status, data["error"]["code"]) == (401, "token_rotated")
            status, data = await http.request("POST", "/api/v1/auth/theft",
                                              {"refresh_token": owner["refresh_token"]})
            assert (status, data) == (200, {"revoked": True})
            status, data = await http.request("GET", "/api/v1/me", token=thief["access_token"])
            assert (status, data["error"]["code"]) == (401, "token_revoked")
            assert (await http.request("POST", "/api/v1/auth/refresh",
                                       {"refresh_token": thief["refresh_token"]}))[0] == 401
            [entry] = as_dicts(await rt.storage.audit.entries(action="auth.theft_reported"))
            assert entry["target"] == "ada@shop.test"
            assert (await http.request("POST", "/api/v1/auth/theft",
                                       {"refresh_token": "forged"}))[0] == 401

    run(scenario())

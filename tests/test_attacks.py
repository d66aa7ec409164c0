"""The attack table of docs/security.md, run against a real embedded server: each attack is
refused with the documented status and code, nothing is logged as an error (no traceback, no
500), and the server keeps serving after every row. The sign-in, token and body-size attacks
that need their own set-up have their own files (tests/test_signin.py, tests/test_tokens.py,
tests/test_limits.py); this table names them too (``SEE_ALSO``) so docs/security.md has one list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.clients import Http, WsClient, add_agent, embedded, login
from tests.support.routing import GENERAL_ONLY, write_routing
from tidedesk.redisstore import RedisStore
from tidedesk.runtime import Runtime
from tidedesk.settings import load_settings

REDIS_URL = "redis://127.0.0.1:6379/0"

DEEP = "[" * 5000 + "]" * 5000


@dataclass
class Ctx:
    rt: Runtime
    http: Http
    agent_token: str
    visitor_token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.rt.port}"

    async def raw(self, method: str, path: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        resp = await AsyncHTTPClient().fetch(HTTPRequest(
            self.base + path, method=method, body=body, allow_nonstandard_methods=True,
            headers={"Content-Type": "application/json", **(headers or {})}),
            raise_error=False)
        try:
            data = json.loads(resp.body or b"null")
        except ValueError:
            data = None
        return resp.code, data, resp.headers

    async def socket(self, path: str, query: str, origin: str | None = None) -> WsClient:
        return WsClient(await connect(f"ws://127.0.0.1:{self.rt.port}{path}?{query}",
                                      additional_headers={"Origin": origin} if origin else None))

    async def visitor_socket(self) -> WsClient:
        _, t = await self.http.request("POST", "/api/v1/ws-ticket", {}, token=self.visitor_token)
        client = await self.socket("/ws/visitor", f"ticket={t['ticket']}")
        await client.wait_type("hello")
        return client


Attack = Callable[[Ctx], Awaitable[tuple[Any, Any]]]


async def rest(ctx: Ctx, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[Any, Any]:
    status, data, _ = await ctx.raw(method, path, body, headers)
    return status, (data or {}).get("error", {}).get("code") if isinstance(data, dict) else None


async def ws_refused(ctx: Ctx, path: str, query: str, origin: str | None = None
                     ) -> tuple[Any, Any]:
    try:
        client = await ctx.socket(path, query, origin)
    except InvalidStatus as exc:
        return exc.response.status_code, None
    return await asyncio.wait_for(client.closed, 5)


async def ws_frame(ctx: Ctx, raw: str) -> tuple[Any, Any]:
    """Send ``raw`` on a visitor socket: (close code or 'open', the error frame's code)."""
    client = await ctx.visitor_socket()
    await client.send(raw)
    err = await client.wait_type("error")
    await asyncio.sleep(0.1)
    state = client.closed.result()[0] if client.closed.done() else "open"
    await client.close()
    return state, err["code"]


async def ticket_replay(ctx: Ctx) -> tuple[Any, Any]:
    _, t = await ctx.http.request("POST", "/api/v1/ws-ticket", {}, token=ctx.agent_token)
    first = await ctx.socket("/ws/agent", f"ticket={t['ticket']}")
    await first.wait_type("hello")
    result = await ws_refused(ctx, "/ws/agent", f"ticket={t['ticket']}")
    await first.close()
    return result


# (name, attack, expected (status or close code, error code)); docs/security.md lists them.
ATTACKS: list[tuple[str, Attack, tuple[Any, Any]]] = [
    ("REST JSON nested 5000 deep", lambda c: rest(
        c, "POST", "/api/v1/visitors", f'{{"name": {DEEP}}}'.encode()), (400, "too_deep")),
    ("REST lone surrogate", lambda c: rest(
        c, "POST", "/api/v1/visitors", b'{"name": "\\ud800"}'), (400, "invalid_text")),
    ("REST NUL in a string", lambda c: rest(
        c, "POST", "/api/v1/visitors", b'{"name": "a\\u0000b"}'), (400, "invalid_text")),
    ("REST NUL in a key", lambda c: rest(
        c, "POST", "/api/v1/auth/login", b'{"email\\u0000": "x"}'), (400, "invalid_text")),
    ("REST body over 64 KiB", lambda c: rest(
        c, "POST", "/api/v1/visitors", b'{"name": "' + b"x" * 70000 + b'"}'),
     (413, "body_too_large")),
    ("REST not JSON", lambda c: rest(c, "POST", "/api/v1/auth/login", b"{'a': 1"),
     (400, "invalid_json")),
    ("NUL in a static path", lambda c: rest(c, "GET", "/static/app.css%00.js"), (404, None)),
    ("path traversal in a static path", lambda c: rest(c, "GET", "/static/..%2f..%2fapp.py"),
     (403, None)),
    ("unknown Host header", lambda c: rest(c, "GET", "/api/v1/openapi.json",
                                           headers={"Host": "evil.example"}),
     (400, "unknown_host")),
    ("WebSocket frame nested 5000 deep", lambda c: ws_frame(c, DEEP), (4400, "bad_frame")),
    ("WebSocket lone surrogate", lambda c: ws_frame(
        c, '{"type": "message", "id": "m1", "body": "\\ud800"}'), ("open", "invalid_text")),
    ("WebSocket NUL in a body", lambda c: ws_frame(
        c, '{"type": "message", "id": "m1", "body": "a\\u0000"}'), ("open", "invalid_text")),
    ("WebSocket ticket used twice", ticket_replay, (4401, "invalid_ticket")),
    ("WebSocket unknown ticket", lambda c: ws_refused(c, "/ws/agent", "ticket=forged"),
     (4401, "invalid_ticket")),
    ("WebSocket from a foreign origin", lambda c: ws_refused(
        c, "/ws/agent", "ticket=x", origin="https://evil.example"), (403, None)),
    ("WebSocket from our host over another scheme", lambda c: ws_refused(
        c, "/ws/agent", "ticket=x", origin=f"https://127.0.0.1:{c.rt.port}"), (403, None)),
    ("WebSocket from an allowed site's look-alike", lambda c: ws_refused(
        c, "/ws/visitor", "ticket=x", origin="https://shop.example.evil.example"), (403, None)),
    ("visitor token where an agent's is needed", lambda c: rest(
        c, "GET", "/api/v1/me", headers={"Authorization": f"Bearer {c.visitor_token}"}),
     (403, "forbidden")),
    ("role change without a second factor", lambda c: rest(
        c, "POST", "/api/v1/agents/1/role", b'{"role": "agent"}',
        headers={"Authorization": f"Bearer {c.agent_token}"}), (403, "second_factor_required")),
    ("theft report with a forged refresh token", lambda c: rest(
        c, "POST", "/api/v1/auth/theft", b'{"refresh_token": "x.y.z"}'), (401, "invalid_token")),
]

# Attacks with their own set-up, in their own files (docs/security.md's table names these too).
SEE_ALSO = {
    "a stranger locks the owner out": "tests/test_signin.py::test_a_strangers_guesses_lock_"
                                      "only_their_own_address",
    "unknown-account timing": "tests/test_signin.py::test_unknown_accounts_answer_as_slowly_"
                              "as_known_ones",
    "TOTP replay in another script": "tests/test_signin.py::test_a_totp_code_in_another_"
                                     "script_is_the_same_code",
    "guessing the TOTP to turn it off": "tests/test_signin.py::test_turning_totp_off_is_"
                                        "throttled",
    "tokens in logs": "tests/test_tokens.py::test_no_token_reaches_a_log_line",
    "stolen refresh token": "tests/test_tokens.py::test_a_theft_report_ends_the_sign_in_and_"
                            "is_audited",
    "8 parallel 90 MB bodies": "tests/test_limits.py::test_memory_stays_flat_under_parallel_"
                               "huge_bodies",
    "a connection that sends nothing": "tests/test_limits.py::test_a_silent_connection_is_"
                                       "dropped",
}


@contextlib.asynccontextmanager
async def server(tmp_path: Path, store: str, **overrides: Any) -> AsyncIterator[Runtime]:
    """The embedded server, with its store in-process or in Redis (what a cluster shares:
    tickets, sign-in counters, rate limits)."""
    if store == "memory":
        async with embedded(tmp_path, GENERAL_ONLY, **overrides) as rt:
            yield rt
        return
    prefix = f"tidedesk-t18a:{uuid.uuid4().hex[:8]}:"
    settings = load_settings(env={}, data_dir=str(tmp_path / "data"), port=0,
                             ws_ping_interval_s=0,
                             routing_file=str(write_routing(tmp_path, GENERAL_ONLY)),
                             **overrides)
    rt = Runtime(settings, "dev", store=RedisStore(REDIS_URL, prefix))
    await rt.start(port=0)
    try:
        yield rt
    finally:
        await rt.stop(drain=False)
        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_every_attack_is_refused_and_the_server_keeps_serving(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, store: str) -> None:
    async def scenario() -> list[str]:
        async with server(tmp_path, store, rate_limit_ip_per_min=0,
                          allowed_origins=("https://shop.example",),
                          public_hosts=("desk.example",)) as rt:
            add_agent(rt, "ada@shop.test", role="admin")
            http = Http(rt)
            _, visitor = await http.request("POST", "/api/v1/visitors", {})
            ctx = Ctx(rt, http, await login(rt, "ada@shop.test"), visitor["token"])
            wrong = []
            for name, attack, expected in ATTACKS:
                got = await asyncio.wait_for(attack(ctx), 15)
                if tuple(got) != expected:
                    wrong.append(f"{name}: expected {expected}, got {got}")
                # Still serving: probes, a new visitor, and a chat socket.
                assert (await http.request("GET", "/healthz"))[0] == 200, name
                assert (await http.request("POST", "/api/v1/visitors", {}))[0] == 201, name
            client = await ctx.visitor_socket()
            await client.close()
            return wrong

    with caplog.at_level(logging.ERROR):
        wrong = asyncio.run(scenario())
    assert not wrong, "\n".join(wrong)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_every_answer_carries_the_browser_protections(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY,
                            allowed_origins=("https://shop.example",)) as rt:
            ctx = Ctx(rt, Http(rt), "", "")
            for path in ("/", "/console", "/supervisor", "/api/v1/openapi.json",
                         "/static/console.js", "/nowhere", "/widget.js"):
                _, _, headers = await ctx.raw("GET", path)
                csp = headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split(
                    "script-src")[1].split(";")[0], (path, csp)
                assert "frame-ancestors 'none'" in csp, (path, csp)
                assert headers["X-Content-Type-Options"] == "nosniff", path
                assert headers["Referrer-Policy"] == "no-referrer", path
                assert "Server" not in headers, (path, headers.get("Server"))
                assert "Strict-Transport-Security" not in headers, path  # plain HTTP
            # The shop demo page may be framed by the allowed sites (and by us).
            _, _, headers = await ctx.raw("GET", "/demo")
            assert "frame-ancestors 'self' https://shop.example" in headers[
                "Content-Security-Policy"]
            # Behind TLS (HAProxy says so): HSTS.
            _, _, headers = await ctx.raw("GET", "/console",
                                          headers={"X-Forwarded-Proto": "https"})
            assert headers["Strict-Transport-Security"].startswith("max-age=")
            # No page of ours has an inline script or handler (the CSP would block it).
            for page in ("console.html", "supervisor.html", "demo.html"):
                text = (Path(__file__).parents[1] / "chatnode" / "static" / page).read_text()
                assert "<script>" not in text and " onclick=" not in text, page

    asyncio.run(scenario())

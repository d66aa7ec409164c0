"""Bad input over WebSocket and REST: the error frame / close code / JSON 4xx of docs/protocol.md,
and the server keeps serving everyone else."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import (
    Http,
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
    ws,
)
from tests.support.routing import GENERAL_ONLY

CASES: list[tuple[str, Any, str, int | None]] = [
    # name, frame, expected error code, expected close code (None: stays open)
    ("not json", "this is {not json", "bad_frame", 4400),
    ("json but not an object", "[1, 2, 3]", "bad_frame", 4400),
    ("unknown type", {"type": "teleport"}, "unknown_type", None),
    ("type missing", {"id": "x"}, "unknown_type", None),
    ("message without id", {"type": "message", "body": "hi"}, "missing_field", None),
    ("message without body", {"type": "message", "id": "m1"}, "missing_field", None),
    ("body not a string", {"type": "message", "id": "m1", "body": 5}, "invalid_field", None),
    ("empty body", {"type": "message", "id": "m1", "body": "   "}, "invalid_field", None),
    ("bad id characters", {"type": "message", "id": "a b<c>", "body": "x"}, "invalid_field",
     None),
    ("oversize body", {"type": "message", "id": "big", "body": "x" * 4001}, "body_too_long",
     None),
    ("resume without after_seq", {"type": "resume"}, "missing_field", None),
    ("negative after_seq", {"type": "resume", "after_seq": -1}, "invalid_field", None),
    ("typing not bool", {"type": "typing", "on": "yes"}, "invalid_field", None),
    ("agent-only frame", {"type": "close", "conversation_id": "abc"}, "unknown_type", None),
    ("another visitor's conversation",
     {"type": "message", "conversation_id": "0" * 32, "id": "m2", "body": "hi"}, "forbidden",
     4403),
]


@pytest.mark.parametrize(("name", "frame", "code", "close_code"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_visitor_frames(tmp_path: Path, name: str, frame: Any, code: str,
                            close_code: int | None) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            dee_id = add_agent(rt, "dee@shop.test")
            agent = await agent_socket(rt, "dee@shop.test")
            await wait_agent_online(rt, dee_id)
            _, _, bystander = await new_visitor(rt)
            _, _, bad = await new_visitor(rt)
            await bad.send(frame)
            err = await bad.wait_type("error")
            assert err["code"] == code, err
            assert err["message"]
            if close_code is None:
                # Still connected and useful.
                assert (await bad.say("still here"))["type"] == "ack"
            else:
                closed = await asyncio.wait_for(bad.closed, 5)
                assert closed[0] == close_code
            # Everyone else is served as before.
            assert (await bystander.say("I am fine"))["type"] == "ack"
            await bystander.close()
            await bad.close()
            await agent.close()

    asyncio.run(scenario())


def test_bad_or_missing_tokens_close_with_4401(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "eve@shop.test")
            _, visitor_token, visitor = await new_visitor(rt)
            cases = [("/ws/visitor", None), ("/ws/visitor", "garbage"),
                     ("/ws/agent", None), ("/ws/agent", visitor_token),  # wrong kind
                     ("/ws/visitor", await login(rt, "eve@shop.test"))]
            for path, token in cases:
                client = await ws(rt, path, token)
                err = await client.wait_type("error")
                assert err["code"] in ("not_authenticated", "invalid_token"), err
                assert (await asyncio.wait_for(client.closed, 5))[0] == 4401
            assert (await visitor.say("unaffected"))["type"] == "ack"
            await visitor.close()

    asyncio.run(scenario())


def test_foreign_origin_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY,
                            allowed_origins="https://shop.example") as rt:
            _, data = await Http(rt).request("POST", "/api/v1/visitors", {})
            token = data["token"]
            with pytest.raises(Exception, match="403"):
                await ws(rt, "/ws/visitor", token, origin="https://evil.example")
            ok = await ws(rt, "/ws/visitor", token, origin="https://shop.example")
            await ok.wait_type("hello")
            await ok.close()

    asyncio.run(scenario())


def test_frame_flood_is_rate_limited_with_4429(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, rate_limit_per_10s=5) as rt:
            _, _, visitor = await new_visitor(rt)
            for _ in range(10):
                await visitor.send({"type": "typing", "on": True})
            err = await visitor.wait_type("error")
            assert err["code"] == "rate_limited"
            assert (await asyncio.wait_for(visitor.closed, 5))[0] == 4429

    asyncio.run(scenario())


def test_oversize_websocket_frame_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, ws_max_message_size=2048) as rt:
            _, _, visitor = await new_visitor(rt)
            await visitor.send({"type": "message", "id": "huge", "body": "x" * 5000})
            code, _ = await asyncio.wait_for(visitor.closed, 5)
            assert code == 1009  # RFC 6455: message too big
            _, _, other = await new_visitor(rt)
            await other.close()

    asyncio.run(scenario())


REST_CASES: list[tuple[str, str, str, Any, bytes | None, int, str]] = [
    ("visitor body not json", "POST", "/api/v1/visitors", None, b"{oops", 400, "invalid_json"),
    ("visitor body a list", "POST", "/api/v1/visitors", [1], None, 400, "invalid_json"),
    ("unknown visitor field", "POST", "/api/v1/visitors", {"age": 3}, None, 400, "invalid_body"),
    ("bad email", "POST", "/api/v1/visitors", {"email": "nope"}, None, 400, "invalid_field"),
    ("bad tags", "POST", "/api/v1/visitors", {"tags": ["Bad Tag!"]}, None, 400,
     "invalid_field"),
    ("bad locale", "POST", "/api/v1/visitors", {"locale": "fr"}, None, 400, "invalid_field"),
    ("oversize body", "POST", "/api/v1/visitors", None, b'{"name":"' + b"x" * 70000 + b'"}',
     413, "body_too_large"),
    ("login missing fields", "POST", "/api/v1/auth/login", {}, None, 400, "invalid_body"),
    ("login wrong password", "POST", "/api/v1/auth/login",
     {"email": "fay@shop.test", "password": "wrong-one"}, None, 401, "invalid_credentials"),
    ("login unknown email", "POST", "/api/v1/auth/login",
     {"email": "who@shop.test", "password": "password1"}, None, 401, "invalid_credentials"),
    ("refresh garbage", "POST", "/api/v1/auth/refresh", {"refresh_token": "x"}, None, 401,
     "invalid_token"),
    ("me without token", "GET", "/api/v1/me", None, None, 401, "not_authenticated"),
    ("history without token", "GET", "/api/v1/conversations/abc/messages", None, None, 401,
     "not_authenticated"),
    ("unknown path", "GET", "/api/v1/nothing-here", None, None, 404, "not_found"),
    ("wrong method", "DELETE", "/api/v1/visitors", None, None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "raw", "status", "code"),
                         REST_CASES, ids=[c[0] for c in REST_CASES])
def test_rest_errors_are_json_4xx(tmp_path: Path, name: str, method: str, path: str, body: Any,
                                  raw: bytes | None, status: int, code: str) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "fay@shop.test")
            got_status, data = await Http(rt).request(method, path, body, raw=raw)
            assert got_status == status, data
            assert data["error"]["code"] == code
            assert data["error"]["message"]

    asyncio.run(scenario())


def test_history_access_rules(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            gus_id = add_agent(rt, "gus@shop.test")
            add_agent(rt, "hal@shop.test")
            gus = await agent_socket(rt, "gus@shop.test")
            await wait_agent_online(rt, gus_id)
            _, v_token, visitor = await new_visitor(rt)
            conv_id = visitor.of_type("hello")[-1]["conversation_id"]
            await gus.wait_type("assigned")
            await visitor.say("hi")
            _, other_token, other = await new_visitor(rt)
            http = Http(rt)
            path = f"/api/v1/conversations/{conv_id}/messages"
            assert (await http.request("GET", path, token=v_token))[0] == 200
            assert (await http.request("GET", path, token=other_token))[0] == 403
            hal = await login(rt, "hal@shop.test")
            status, data = await http.request("GET", path, token=hal)
            assert status == 403 and data["error"]["code"] == "forbidden"
            status, data = await http.request("GET", path + "?after_seq=x",
                                              token=await login(rt, "gus@shop.test"))
            assert status == 400 and "after_seq" in data["error"]["message"]
            for c in (visitor, other, gus):
                await c.close()

    asyncio.run(scenario())

"""Security: the authorisation matrix (every REST endpoint of chatnode/routes.py and WebSocket
action of chatnode/access.py against every kind of bad credential), sign-in delays and lock,
TOTP window and enrolment, refresh-token rotation, reuse detection and sign-out, rate limits, and
encryption at rest (no plaintext in the database file)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from chatnode import access, routes
from chatnode.accounts import session_end_applies
from tests.support.clients import (
    Http,
    WsClient,
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
    ws,
)
from tests.support.routing import GENERAL_ONLY
from tests.support.uploads import upload
from tests.support.waiting import wait_until_async
from tidedesk import auth
from tidedesk.auth import (
    REFRESH_GRACE_SECS,
    RefreshFamily,
    TokenService,
    refresh_verdict,
    signin_wait,
    verify_totp,
)
from tidedesk.runtime import Runtime
from tidedesk.storage.records import as_dicts


def run(coro: Any) -> None:
    asyncio.run(coro)


def clear_of_window_edge(needed_s: float = 8.0) -> None:
    """Rate limits count per calendar minute: start a counting test early enough in one that
    its requests do not straddle two."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


# -- pure decisions ---------------------------------------------------------------------------

@pytest.mark.parametrize(("failures", "since_last", "wait"), [
    (0, 0, 0), (1, 0, 0), (2, 0, 0),  # two free failures
    (3, 0, 1), (3, 0.4, 0.6), (3, 1, 0),  # then 1 s, 2 s, 4 s ... after the last failure
    (4, 0, 2), (5, 1, 3), (6, 0, 8), (9, 0, 60),  # capped at a minute
    (10, 0, 900), (10, 899, 1), (10, 900, 0), (12, 100, 800),  # locked for lock_s
], ids=lambda v: str(v))
def test_signin_wait_grows_then_locks(failures: int, since_last: float, wait: float) -> None:
    got = signin_wait(failures, 1000.0, 1000.0 + since_last, lock_after=10, lock_s=900)
    assert got == pytest.approx(wait)


@pytest.mark.parametrize(("offset_s", "accepted"), [
    (0, True), (-29, True), (29, True), (-40, True), (40, True),  # one 30 s step of drift
    (-75, False), (75, False), (-300, False), (3600, False),
])
def test_totp_is_accepted_inside_its_window_only(offset_s: float, accepted: bool) -> None:
    secret = pyotp.random_base32()
    issued_at = 1_700_000_025.0  # the middle of a 30 s step (they start at ...010)
    code = pyotp.TOTP(secret).at(issued_at)
    assert verify_totp(secret, code, issued_at + offset_s) is accepted


# -- the authorisation matrix -----------------------------------------------------------------

class World:
    """Two visitors (A with an assigned chat, B), agents of every role, bad tokens."""

    rt: Runtime
    tokens: dict[str, str]
    conv_a: str
    agent_ids: dict[str, str]
    attachment: str  # a file visitor A sent in conv_a


async def _world(rt: Runtime) -> tuple[World, list[WsClient]]:
    w = World()
    w.rt = rt
    w.agent_ids = {role: add_agent(rt, f"{role}@shop.test", role=role)
                   for role in ("agent", "supervisor", "admin")}
    w.agent_ids["owner"] = add_agent(rt, "owner@shop.test")
    owner = await agent_socket(rt, "owner@shop.test")
    await wait_agent_online(rt, w.agent_ids["owner"])
    _, token_a, visitor_a = await new_visitor(rt, name="Alice")
    w.conv_a = (visitor_a.of_type("hello")[-1])["conversation_id"]
    await owner.wait_type("assigned", conversation_id=w.conv_a)
    status, att = await upload(rt.port, token_a, b"order 1234", "order.txt")
    assert status == 201, att
    w.attachment = att["id"]
    await visitor_a.send({"type": "message", "id": "with-file", "body": "",
                          "attachments": [w.attachment]})
    await visitor_a.wait_type("ack", id="with-file")
    _, token_b, visitor_b = await new_visitor(rt, name="Bob")
    other = TokenService("not-our-secret-" * 4, 900, 3600)
    old = TokenService(rt.settings.jwt_secret, 900, 3600)
    long_ago = time.time() - 40 * 86400
    w.tokens = {
        "visitor_a": token_a, "visitor_b": token_b,
        **{role: await login(rt, f"{role}@shop.test") for role in ("agent", "supervisor",
                                                                     "admin")},
        "expired": old.agent_tokens(w.agent_ids["admin"], "admin", family="f", jti="j",
                                    now=long_ago)["access_token"],
        "expired_visitor": old.visitor_token("v", now=long_ago),
        "forged": other.agent_tokens(w.agent_ids["admin"], "admin", family="f",
                                     jti="j")["access_token"],
        "forged_visitor": other.visitor_token("v"),
        "unknown_api": auth.new_api_token(),
    }
    # An integration's token for each scope (issue 16): admitted only where a rule names it.
    for scope in auth.SCOPES:
        token = auth.new_api_token()
        await rt.storage.api_tokens.create(name=f"t-{scope}", scopes=(scope,),
                                           token_hash=auth.api_token_hash(token), created_by="t")
        w.tokens[f"scope:{scope}"] = token
    return w, [owner, visitor_a, visitor_b]


# Endpoints any visitor may call that name no conversation (visitor B is not refused there).
UNSCOPED = {("POST", "/api/v1/attachments")}


def _concrete(path: str, w: World) -> str:
    if "/attachments/" in path:
        return path.replace("{id}", w.attachment)
    if "/conversations/" in path:
        return path.replace("{id}", w.conv_a)
    return path.replace("{id}", w.agent_ids["agent"])


def test_every_rest_endpoint_refuses_bad_credentials(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The gate only: the admins' second-factor guard has its test in tests/test_signin.py.
        async with embedded(tmp_path, GENERAL_ONLY, admin_require_2fa=False) as rt:
            w, clients = await _world(rt)
            http = Http(rt)
            checked = 0
            for (method, path), rule in routes.REST.items():
                if "public" in rule:
                    continue
                url = _concrete(path, w)
                body = {} if method in ("POST", "PUT") else None
                cases: list[tuple[str | None, int, str]] = [
                    (None, 401, "not_authenticated"),
                    (w.tokens["expired"], 401, "token_expired"),
                    (w.tokens["forged"], 401, "invalid_token"),
                ]
                if "visitor" in rule:
                    cases += [(w.tokens["expired_visitor"], 401, "token_expired"),
                              (w.tokens["forged_visitor"], 401, "invalid_token")]
                    if "{id}" in path and (method, path) not in UNSCOPED:  # another's
                        cases.append((w.tokens["visitor_b"], 403, "forbidden"))
                else:
                    cases.append((w.tokens["visitor_a"], 403, "forbidden"))
                cases += [(w.tokens[role], 403, "forbidden")
                          for role in ("agent", "supervisor", "admin") if role not in rule]
                cases.append((w.tokens["unknown_api"], 401, "invalid_token"))
                cases += [(w.tokens[f"scope:{s}"], 403, "forbidden")
                          for s in auth.SCOPES if f"scope:{s}" not in rule]
                for token, status, code in cases:
                    got, data = await http.request(method, url, body, token=token)
                    assert (got, data["error"]["code"]) == (status, code), \
                        (method, path, token and token[:12], data)
                    checked += 1
                # And the right credentials get past the gate (no 401/403).
                good = next((w.tokens[r] for r in ("admin", "supervisor", "agent") if r in rule),
                            w.tokens["visitor_a"])  # a visitor-only route (the transcript)
                got, data = await http.request(method, url, body, token=good)
                assert got not in (401, 403), (method, path, data)
                for scope in access.scopes_of(rule):  # and so does a token with the scope
                    got, data = await http.request(method, url, body,
                                                   token=w.tokens[f"scope:{scope}"])
                    assert got not in (401, 403), (method, path, scope, data)
            assert checked >= 40
            # The served OpenAPI document tells every operation's rule.
            _, doc = await http.request("GET", "/api/v1/openapi.json")
            for (method, path), rule in routes.REST.items():
                op = doc["paths"][path][method.lower()]
                assert op["x-tidedesk-access"] == access.describe(rule), (method, path)
            for c in clients:
                await c.close()

    run(scenario())


SAMPLE_FRAMES: dict[str, dict[str, Any]] = {
    "message": {"id": "m1", "body": "hi"}, "note": {"id": "n1", "body": "psst"},
    "resume": {"after_seq": 0}, "typing": {"on": True}, "read": {"seq": 1},
    "status": {"status": "away"}, "close": {}, "transfer": {"to_pool": "general"},
    "ping": {}, "rating": {"score": 5},
}


def test_every_websocket_action_refuses_bad_credentials(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            w, clients = await _world(rt)
            # Connecting: no token, expired, forged, the other socket's kind -> 4401.
            for path, bad in (("/ws/visitor", [None, "expired_visitor", "forged_visitor",
                                               "agent"]),
                              ("/ws/agent", [None, "expired", "forged", "visitor_a"])):
                for name in bad:
                    client = await ws(rt, path, w.tokens[name] if name else None)
                    assert (await asyncio.wait_for(client.closed, 5))[0] == 4401, (path, name)
            kinds = {kind for (_, kind) in access.WS}
            assert kinds == set(SAMPLE_FRAMES)
            # A visitor naming another conversation is closed with 4403, for every action.
            for (socket, kind), rule in access.WS.items():
                if socket != "visitor":
                    continue
                assert rule == access.VISITOR
                client = await ws(rt, "/ws/visitor", w.tokens["visitor_b"])
                await client.wait_type("hello")
                await client.send({"type": kind, "conversation_id": w.conv_a,
                                   **SAMPLE_FRAMES[kind]})
                assert (await asyncio.wait_for(client.closed, 5))[0] == 4403, kind
            # Agent-only actions on a visitor socket: refused, named in the error.
            client = await ws(rt, "/ws/visitor", w.tokens["visitor_b"])
            await client.wait_type("hello")
            for (socket, kind) in access.WS:
                if socket == "agent" and ("visitor", kind) not in access.WS:
                    await client.send({"type": kind, **SAMPLE_FRAMES[kind]})
                    err = await client.wait_for(lambda f, k=kind: f.get("type") == "error"
                                                and k in f.get("message", ""))
                    assert err["code"] == "unknown_type"
            await client.close()
            # An agent acting on a chat that is not theirs: forbidden, for every action.
            agent = await agent_socket(rt, "agent@shop.test")
            for (socket, kind) in access.WS:
                if socket != "agent" or kind in ("status", "ping"):
                    continue  # these name no conversation
                start = len(agent.frames)
                await agent.send({"type": kind, "conversation_id": w.conv_a,
                                  **SAMPLE_FRAMES[kind]})
                err = await agent.wait_for(lambda f: f.get("type") == "error", start=start)
                assert err["code"] == "forbidden", (kind, err)
            await agent.close()
            for c in clients:
                await c.close()

    run(scenario())


# -- tokens ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "jti", "now", "verdict"), [
    (None, "a", 0, "revoked"),
    (RefreshFamily("a"), "a", 0, "rotate"),
    (RefreshFamily("b", "a", 100.0), "b", 100, "rotate"),
    (RefreshFamily("b", "a", 100.0), "a", 100 + REFRESH_GRACE_SECS, "sibling"),
    (RefreshFamily("b", "a", 100.0), "a", 100.1 + REFRESH_GRACE_SECS, "reused"),
    (RefreshFamily("c", "b", 100.0), "a", 100, "reused"),  # older than the previous one
    (RefreshFamily("a"), "", 0, "reused"),
], ids=["gone", "live", "live-after-rotation", "sibling-in-grace", "spent", "older", "no-jti"])
def test_refresh_verdict(family: RefreshFamily | None, jti: str, now: float,
                         verdict: str) -> None:
    assert refresh_verdict(family, jti, now) == verdict
    if family is not None:
        assert RefreshFamily.decode(family.encode()) == family


def test_refresh_rotates_and_a_reused_token_revokes_the_sign_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "rae@shop.test")
            admin_id = add_agent(rt, "root@shop.test", role="admin")
            http = Http(rt)
            creds = {"email": "rae@shop.test", "password": "password1"}
            _, first = await http.request("POST", "/api/v1/auth/login", creds)
            # Two tabs refresh at once with the same token: one wins, the other is told to
            # use its sibling's tokens, and the sign-in lives on.
            results = await asyncio.gather(*(http.request(
                "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
                for _ in range(2)))
            [(status, second)] = [r for r in results if r[0] == 200]
            [(_, lost)] = [r for r in results if r[0] != 200]
            assert lost["error"]["code"] == "token_rotated"
            assert second["refresh_token"] != first["refresh_token"]
            assert (await http.request("GET", "/api/v1/me",
                                       token=second["access_token"]))[0] == 200
            # After the grace window, the spent token again means someone copied it: the
            # whole sign-in ends.
            monkeypatch.setattr(auth, "REFRESH_GRACE_SECS", 0.0)
            status, data = await http.request("POST", "/api/v1/auth/refresh",
                                              {"refresh_token": first["refresh_token"]})
            assert (status, data["error"]["code"]) == (401, "token_reused")
            status, data = await http.request("POST", "/api/v1/auth/refresh",
                                              {"refresh_token": second["refresh_token"]})
            assert (status, data["error"]["code"]) == (401, "token_revoked")
            status, data = await http.request("GET", "/api/v1/me",
                                              token=second["access_token"])
            assert (status, data["error"]["code"]) == (401, "token_revoked")
            # Signing out ends a sign-in for the REST API and the WebSocket alike.
            _, third = await http.request("POST", "/api/v1/auth/login", creds)
            assert (await http.request("POST", "/api/v1/auth/logout",
                                       {"refresh_token": third["refresh_token"]}))[0] == 200
            assert (await http.request("GET", "/api/v1/me",
                                       token=third["access_token"]))[0] == 401
            client = await ws(rt, "/ws/agent", third["access_token"])
            assert (await asyncio.wait_for(client.closed, 5))[0] == 4401
            # All of it is in the audit log, which admins read through the API.
            status, audit = await http.request("GET", "/api/v1/audit?action=auth.",
                                               token=await login(rt, "root@shop.test"))
            assert status == 200
            actions = [e["action"] for e in audit["entries"]]
            assert {"auth.login", "auth.refresh_reused", "auth.logout"} <= set(actions)
            assert all(a.startswith("auth.") for a in actions)
            assert admin_id

    run(scenario())


def test_a_restart_that_empties_the_store_signs_nobody_in_or_out(tmp_path: Path) -> None:
    creds = {"email": "sam@shop.test", "password": "password1"}

    async def before() -> tuple[dict[str, Any], dict[str, Any]]:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "sam@shop.test")
            http = Http(rt)
            kept = (await http.request("POST", "/api/v1/auth/login", creds))[1]
            ended = (await http.request("POST", "/api/v1/auth/login", creds))[1]
            assert (await http.request("POST", "/api/v1/auth/logout", {},
                                       token=ended["access_token"]))[0] == 200
            return kept, ended

    async def after(kept: dict[str, Any], ended: dict[str, Any]) -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:  # a new, empty in-process store
            http = Http(rt)
            assert (await http.request("GET", "/api/v1/me", token=kept["access_token"]))[0] == 200
            status, fresh = await http.request("POST", "/api/v1/auth/refresh",
                                               {"refresh_token": kept["refresh_token"]})
            assert status == 200
            assert (await http.request("GET", "/api/v1/me", token=fresh["access_token"]))[0] == 200
            for call in (http.request("GET", "/api/v1/me", token=ended["access_token"]),
                         http.request("POST", "/api/v1/auth/refresh",
                                      {"refresh_token": ended["refresh_token"]})):
                status, data = await call
                assert (status, data["error"]["code"]) == (401, "token_revoked")

    asyncio.run(after(*asyncio.run(before())))


def test_totp_enrolment_with_qr_code_then_sign_in_needs_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "tess@shop.test")
            http = Http(rt)
            token = await login(rt, "tess@shop.test")
            status, data = await http.request("POST", "/api/v1/me/totp/confirm",
                                              {"code": "123456"}, token=token)
            assert (status, data["error"]["code"]) == (409, "no_enrolment")
            status, enrol = await http.request("POST", "/api/v1/me/totp", {}, token=token)
            assert status == 200
            assert enrol["otpauth_uri"].startswith("otpauth://totp/Tidedesk:tess%40shop.test?")
            assert f"secret={enrol['secret']}" in enrol["otpauth_uri"]
            prefix = "data:image/svg+xml;base64,"
            assert enrol["qr_svg"].startswith(prefix)
            assert b"<svg" in base64.b64decode(enrol["qr_svg"][len(prefix):])
            totp = pyotp.TOTP(enrol["secret"])
            wrong = "000000" if totp.now() != "000000" else "111111"
            status, data = await http.request("POST", "/api/v1/me/totp/confirm",
                                              {"code": wrong}, token=token)
            assert (status, data["error"]["code"]) == (400, "invalid_totp")
            assert (await http.request("POST", "/api/v1/me/totp/confirm",
                                       {"code": totp.now()}, token=token))[0] == 200
            # While it is on, no new seed can replace it (a stolen access token would make the
            # thief's phone the second factor).
            status, data = await http.request("POST", "/api/v1/me/totp", {}, token=token)
            assert (status, data["error"]["code"]) == (409, "totp_on")
            creds = {"email": "tess@shop.test", "password": "password1"}
            status, data = await http.request("POST", "/api/v1/auth/login", creds)
            assert (status, data["error"]["code"]) == (401, "totp_required")
            code = totp.now()
            status, _ = await http.request("POST", "/api/v1/auth/login", {**creds, "totp": code})
            assert status == 200
            status, data = await http.request("POST", "/api/v1/auth/login",
                                              {**creds, "totp": code})
            assert (status, data["error"]["code"]) == (401, "invalid_totp")  # no replay
            assert (await http.request("POST", "/api/v1/me/totp/disable",
                                       {"code": totp.now()}, token=token))[0] == 200
            assert (await http.request("POST", "/api/v1/auth/login", creds))[0] == 200
            entries = as_dicts(await rt.storage.audit.entries(action="2fa."))
            assert [e["action"] for e in entries] == ["2fa.disabled", "2fa.enabled",
                                                      "2fa.code_failed", "2fa.enrol_started"]

    run(scenario())


def test_parallel_guesses_do_not_get_past_the_delays(tmp_path: Path) -> None:
    """Twenty wrong passwords at once: each waits for the one before (429 meanwhile), so no
    more are checked than the free failures allow; the right password is then told to wait."""
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, rate_limit_ip_per_min=0) as rt:
            add_agent(rt, "gus@shop.test")
            http = Http(rt)
            guess = {"email": "gus@shop.test", "password": "wrong-guess"}
            answers = await asyncio.gather(*(http.request("POST", "/api/v1/auth/login", guess)
                                             for _ in range(20)))
            codes = [(status, data["error"]["code"]) for status, data in answers]
            checked = codes.count((401, "invalid_credentials"))
            assert 1 <= checked <= auth.SIGNIN_FREE_FAILURES + 1, codes
            assert all(c[0] == 429 for c in codes if c != (401, "invalid_credentials")), codes
            status, data = await http.request("POST", "/api/v1/auth/login",
                                              {**guess, "password": "password1"})
            if checked > auth.SIGNIN_FREE_FAILURES:
                assert (status, data["error"]["code"]) == (429, "rate_limited")

    run(scenario())


def test_a_token_verified_once_is_still_checked_for_expiry_and_kind() -> None:
    """The verified-token memory (issue 17) answers as PyJWT would: a kept token expires on
    time, a forged one is never kept, the kind is checked on every use, and it is bounded."""
    tokens = TokenService("s" * 40, 900, 3600, visitor_ttl_s=60)
    now = time.time()
    soon = tokens.visitor_token("v1", now=now - 58.5)  # expires in 1.5 s
    assert tokens.decode(soon, "visitor") == auth.Principal("visitor", "v1")
    assert tokens.decode(soon, "visitor").id == "v1"  # from the memory
    with pytest.raises(auth.AuthError, match="needs a access token"):
        tokens.decode(soon, "access")
    forged = TokenService("t" * 40, 900, 3600).visitor_token("v1")
    for _ in range(2):
        with pytest.raises(auth.AuthError) as refused:
            tokens.decode(forged, "visitor")
        assert refused.value.code == "invalid_token"
    time.sleep(max(0.0, now + 1.6 - time.time()))
    with pytest.raises(auth.AuthError) as expired:
        tokens.decode(soon, "visitor")
    assert expired.value.code == "token_expired"
    for i in range(auth.VERIFIED_TOKENS_KEPT + 10):
        tokens.decode(tokens.visitor_token(f"v{i}", now=now - i / 1000), "visitor")
    assert len(tokens._verified) == auth.VERIFIED_TOKENS_KEPT


def test_a_seed_that_is_not_base32_verifies_nothing() -> None:
    """Say a seed that could not be decrypted: refused like a wrong code, not a crash (500)."""
    assert verify_totp("!undecryptable", "123456") is False


def test_admin_changes_a_role_and_it_is_audited(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The second-factor guard of admin changes: tests/test_signin.py.
        async with embedded(tmp_path, GENERAL_ONLY, admin_require_2fa=False) as rt:
            admin_id = add_agent(rt, "ada@shop.test", role="admin")
            agent_id = add_agent(rt, "ben@shop.test")
            http = Http(rt)
            token = await login(rt, "ada@shop.test")
            _, before = await http.request("POST", "/api/v1/auth/login",
                                           {"email": "ben@shop.test", "password": "password1"})
            await asyncio.sleep(1.0)  # tokens carry whole seconds
            status, data = await http.request("POST", f"/api/v1/agents/{agent_id}/role",
                                              {"role": "boss"}, token=token)
            assert (status, data["error"]["code"]) == (400, "invalid_field")
            assert "agent, supervisor, admin" in data["error"]["message"]
            status, _ = await http.request("POST", f"/api/v1/agents/{agent_id}/role",
                                           {"role": "supervisor"}, token=token)
            assert status == 200
            status, data = await http.request("POST", f"/api/v1/agents/{admin_id}/role",
                                              {"role": "agent"}, token=token)
            assert status == 409  # no admin demotes themselves
            status, _ = await http.request("POST", f"/api/v1/agents/{admin_id}/role",
                                           {"role": "admin"}, token=token)
            assert status == 200  # no change: nothing audited, the token stays good
            assert (await http.request("GET", "/api/v1/me", token=token))[0] == 200
            status, data = await http.request("POST", "/api/v1/agents/999/role",
                                              {"role": "agent"}, token=token)
            assert status == 404
            # Ben's token from before names the old role: refused until refreshed.
            status, data = await http.request("GET", "/api/v1/me",
                                              token=before["access_token"])
            assert (status, data["error"]["code"]) == (401, "token_stale")
            client = await ws(rt, "/ws/agent", before["access_token"])
            assert (await asyncio.wait_for(client.closed, 5))[0] == 4401
            _, fresh = await http.request("POST", "/api/v1/auth/refresh",
                                          {"refresh_token": before["refresh_token"]})
            assert (await http.request("GET", "/api/v1/supervisor/overview",
                                       token=fresh["access_token"]))[0] == 200
            _, audit = await http.request("GET", "/api/v1/audit?action=agent.", token=token)
            [entry] = audit["entries"]
            assert (entry["actor"], entry["target"], entry["detail"]) == (
                f"agent:{admin_id}", "ben@shop.test", {"from": "agent", "to": "supervisor"})

    run(scenario())


def test_ending_a_sign_in_or_changing_the_role_closes_open_sockets(tmp_path: Path) -> None:
    """Signing out (or a reused refresh token) closes that sign-in's open consoles with 4401;
    another sign-in of the same agent stays; a role change closes every older socket."""
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, admin_require_2fa=False) as rt:
            add_agent(rt, "ada@shop.test", role="admin")
            agent_id = add_agent(rt, "ben@shop.test")
            http = Http(rt)
            admin = await login(rt, "ada@shop.test")
            _, laptop = await http.request("POST", "/api/v1/auth/login",
                                           {"email": "ben@shop.test", "password": "password1"})
            phone = await login(rt, "ben@shop.test")
            on_laptop = await ws(rt, "/ws/agent", laptop["access_token"])
            on_phone = await ws(rt, "/ws/agent", phone)
            for client in (on_laptop, on_phone):
                await client.wait_type("hello")

            status, _ = await http.request("POST", "/api/v1/auth/logout",
                                           {"refresh_token": laptop["refresh_token"]})
            assert status in (200, 204)
            assert (await asyncio.wait_for(on_laptop.closed, 5))[0] == 4401
            assert on_laptop.frames[-1]["code"] == "token_revoked"
            await asyncio.sleep(0.2)
            assert not on_phone.closed.done(), "another sign-in of the same agent was closed"

            await asyncio.sleep(1.0)  # tokens carry whole seconds
            status, _ = await http.request("POST", f"/api/v1/agents/{agent_id}/role",
                                           {"role": "supervisor"}, token=admin)
            assert status == 200
            assert (await asyncio.wait_for(on_phone.closed, 5))[0] == 4401
            assert on_phone.frames[-1]["code"] == "token_stale"
            assert not any(f["type"] == "session_ended"
                           for f in on_laptop.frames + on_phone.frames), "internal notice leaked"

    run(scenario())


@pytest.mark.parametrize(("notice", "family", "issued_at", "closes"), [
    ({"reason": "logout", "family": "f1"}, "f1", 100, "token_revoked"),
    ({"reason": "refresh_reused", "family": "f1"}, "f1", 100, "token_revoked"),
    ({"reason": "logout", "family": "f2"}, "f1", 100, None),
    ({"reason": "role_changed", "role": "supervisor"}, "f1", 100, "token_stale"),
    ({"reason": "role_changed", "role": "agent"}, "f1", 100, None),  # names the role already
])
def test_session_end_applies(notice: dict[str, Any], family: str, issued_at: int,
                             closes: str | None) -> None:
    principal = auth.Principal("agent", "7", "agent", family=family, issued_at=issued_at)
    ended = session_end_applies(principal, {"type": "session_ended", **notice})
    assert (ended[0] if ended else None) == closes


# -- rate limits -----------------------------------------------------------------------------

def test_rate_limits_per_address_and_per_token(tmp_path: Path) -> None:
    clear_of_window_edge()

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, rate_limit_ip_per_min=8,
                            rate_limit_token_per_min=3) as rt:
            add_agent(rt, "lim@shop.test")
            http = Http(rt)
            token = await login(rt, "lim@shop.test")  # 1 from this address
            statuses = [(await http.request("GET", "/api/v1/me", token=token))[0]
                        for _ in range(4)]  # 2..5 from this address; 1..4 for the token
            assert statuses == [200, 200, 200, 429]
            status, data = await http.request("POST", "/api/v1/visitors", {})  # 6th
            assert status == 201
            client = await ws(rt, "/ws/visitor", data["token"])  # 7th
            await client.wait_type("hello")
            await client.close()
            assert (await http.request("GET", "/healthz"))[0] == 200  # probes: no limit
            assert (await http.request("POST", "/api/v1/visitors", {}))[0] == 201  # 8th
            status, data = await http.request("POST", "/api/v1/visitors", {})  # 9th
            assert (status, data["error"]["code"]) == (429, "rate_limited")
            client = await ws(rt, "/ws/visitor", "whatever")
            assert (await asyncio.wait_for(client.closed, 5))[0] in (4401, 4429)
            _, data = await http.request("GET", "/metrics")
            assert 'tidedesk_rate_limited_total{scope="ip"}' in data

    run(scenario())


def test_rate_limited_answer_carries_retry_after(tmp_path: Path) -> None:
    clear_of_window_edge()

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, rate_limit_ip_per_min=1) as rt:
            from tornado.httpclient import AsyncHTTPClient

            url = f"http://127.0.0.1:{rt.port}/api/v1/openapi.json"
            first = await AsyncHTTPClient().fetch(url, raise_error=False)
            second = await AsyncHTTPClient().fetch(url, raise_error=False)
            assert (first.code, second.code) == (200, 429)
            assert 1 <= int(second.headers["Retry-After"]) <= 61
            status_ws = await ws(rt, "/ws/visitor", "x")
            code, _ = await asyncio.wait_for(status_ws.closed, 5)
            assert code in (4401, 4429)

    run(scenario())


# -- encryption at rest ---------------------------------------------------------------------

TOTP_SEED = "JBSWY3DPEHPK3PXPQUOKKASEEDXYZ234"
SECRETS = {"name": "Zelda Quimby", "email": "zelda.quimby@example.org", "phone": "+44 20 7946 0958"}


def _database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("tidedesk.sqlite3*")))


def test_visitor_fields_and_bodies_are_never_stored_in_the_clear(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, encrypt_message_bodies=True) as rt:
            enc_id = add_agent(rt, "enc@shop.test")
            add_agent(rt, "seed@shop.test", totp_secret=TOTP_SEED)
            status, _ = await Http(rt).request("POST", "/api/v1/auth/login", {
                "email": "seed@shop.test", "password": "password1",
                "totp": pyotp.TOTP(TOTP_SEED).now()})
            assert status == 200  # the seed is read back from its ciphertext
            agent = await agent_socket(rt, "enc@shop.test")
            await wait_agent_online(rt, enc_id)
            visitor_id, token, visitor = await new_visitor(rt, opening=None, **SECRETS)
            assert (await visitor.say("my card ends in 4242 quokka"))["type"] == "ack"
            assigned = await agent.wait_type("assigned")
            assert assigned["visitor"]["name"] == SECRETS["name"]  # agents see plaintext
            conv = visitor.of_type("hello")[-1]["conversation_id"]
            await agent.wait_type("message", body="my card ends in 4242 quokka")
            status, data = await Http(rt).request(
                "GET", f"/api/v1/conversations/{conv}/messages", token=token)
            assert status == 200
            assert [m["body"] for m in data["messages"]] == ["my card ends in 4242 quokka"]
            row = await rt.storage.visitors.get(visitor_id)
            assert (row.name, row.email, row.phone) == tuple(SECRETS.values())
            await visitor.close()
            await agent.close()
        stored = _database_bytes(tmp_path / "data")
        assert stored
        for secret in [*SECRETS.values(), "quokka", TOTP_SEED]:
            assert secret.encode() not in stored, secret

    run(scenario())


def test_rotate_key_reencrypts_with_the_new_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tidedesk.crypto import FieldCipher, key_id

    old_key = base64.b64encode(b"o" * 32).decode()
    new_key = base64.b64encode(b"n" * 32).decode()

    async def write_with_old_key() -> str:
        async with embedded(tmp_path, GENERAL_ONLY, aes_key=old_key,
                            encrypt_message_bodies=True) as rt:
            visitor_id, token, visitor = await new_visitor(rt, **SECRETS)
            _, att = await upload(rt.port, token, b"receipt", "receipt.txt")
            await visitor.send({"type": "message", "id": "f1", "body": "",
                                "attachments": [att["id"]]})
            await visitor.wait_type("ack", id="f1")
            await asyncio.sleep(0.3)  # the router's batch reaches the database
            await visitor.close()
            return visitor_id

    visitor_id = asyncio.run(write_with_old_key())
    env = {"PATH": "/usr/bin:/bin", "TIDEDESK_DATA_DIR": str(tmp_path / "data"),
           "TIDEDESK_AES_KEY": new_key}
    cmd = [sys.executable, "-m", "tidedesk.cli", "admin", "rotate-key"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "TIDEDESK_AES_PREVIOUS_KEYS" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    env["TIDEDESK_AES_PREVIOUS_KEYS"] = old_key
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert f"key {key_id(new_key)}: 3 visitor field(s)" in out.stdout
    assert "2 attachment name(s) and list(s)" in out.stdout

    async def read_with_new_key_only() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, aes_key=new_key) as rt:
            row = await rt.storage.visitors.get(visitor_id)
            assert (row.name, row.email, row.phone) == tuple(SECRETS.values())
            assert row.name_enc.startswith(f"v2:{key_id(new_key)}:")
            assert FieldCipher(old_key).decrypt(row.email_enc, "visitor.email") is None
            entries = as_dicts(await rt.storage.audit.entries(action="admin."))
            assert entries[0]["target"] == key_id(new_key)
            # issue 15: the file's name and the message's list were resealed too.
            shard = rt.storage.main
            names = [r.name for r in shard["Attachment"].select()]
            assert len(names) == 1 and names[0].startswith(f"v2:{key_id(new_key)}:")
            lists = [r.attachments for s in rt.storage.shards for r in
                     s["Message"].select().where(s["Message"].attachments.is_null(False))]
            assert len(lists) == 1 and lists[0].startswith(f"v2:{key_id(new_key)}:")

    asyncio.run(read_with_new_key_only())
    assert json.dumps(SECRETS["email"]).strip('"').encode() not in _database_bytes(
        tmp_path / "data")


def test_rotate_key_refuses_bodies_of_an_unknown_key_rather_than_sealing_them_twice(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    lost_key = base64.b64encode(b"l" * 32).decode()

    async def write_with_a_key_that_is_then_lost() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, aes_key=lost_key,
                            encrypt_message_bodies=True) as rt:
            _, _, visitor = await new_visitor(rt)  # no name, e-mail or phone to encrypt
            assert (await visitor.say("v2: my order 1234 never came"))["type"] == "ack"
            conv = visitor.of_type("hello")[-1]["conversation_id"]
            await wait_until_async("the router to store the message",
                                   lambda: rt.storage.messages.count(conv), 5)
            await visitor.close()

    asyncio.run(write_with_a_key_that_is_then_lost())
    before = _database_bytes(tmp_path / "data")
    env = {"PATH": "/usr/bin:/bin", "TIDEDESK_DATA_DIR": str(tmp_path / "data"),
           "TIDEDESK_AES_KEY": base64.b64encode(b"n" * 32).decode(),
           "TIDEDESK_ENCRYPT_MESSAGE_BODIES": "true"}
    out = subprocess.run([sys.executable, "-m", "tidedesk.cli", "admin", "rotate-key"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "message body" in out.stderr and "TIDEDESK_AES_PREVIOUS_KEYS" in out.stderr
    assert "Traceback" not in out.stderr
    assert _database_bytes(tmp_path / "data") == before, "a body was changed"


@pytest.mark.mariadb
@pytest.mark.redis
@pytest.mark.rabbitmq
@pytest.mark.slow
def test_cluster_nodes_share_sign_ins_and_rate_limits_through_redis(tmp_path: Path) -> None:
    from tests.support.cluster import cluster

    with cluster(tmp_path, shards=1) as c:
        c.env["TIDEDESK_RATE_LIMIT_IP_PER_MIN"] = "6"
        c.add_agent("cora@shop.test")
        node1 = c.start("chatnode", "node1")
        node2 = c.start("chatnode", "node2")

        clear_of_window_edge()

        async def scenario() -> None:
            h1, h2 = Http(node1), Http(node2)  # type: ignore[arg-type]
            creds = {"email": "cora@shop.test", "password": "password1"}
            _, tokens = await h1.request("POST", "/api/v1/auth/login", creds)  # 1
            status, fresh = await h2.request("POST", "/api/v1/auth/refresh",  # 2
                                             {"refresh_token": tokens["refresh_token"]})
            assert status == 200
            assert (await h2.request("POST", "/api/v1/auth/logout",  # 3
                                     {"refresh_token": fresh["refresh_token"]}))[0] == 200
            status, data = await h1.request("GET", "/api/v1/me",  # 4: the other node knows
                                            token=fresh["access_token"])
            assert (status, data["error"]["code"]) == (401, "token_revoked")
            assert (await h2.request("POST", "/api/v1/visitors", {}))[0] == 201  # 5
            assert (await h1.request("POST", "/api/v1/visitors", {}))[0] == 201  # 6
            status, data = await h2.request("POST", "/api/v1/visitors", {})  # 7: one count
            assert (status, data["error"]["code"]) == (429, "rate_limited")

        asyncio.run(scenario())

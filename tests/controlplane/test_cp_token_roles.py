"""Control-plane API tokens with roles (issue 18): `alerts` posts Alertmanager webhooks only,
`read` only reads, `operate` does everything; the audit's actor is the token's name, never a
header. A real Tornado server on the real ControlPlane over the memory seams."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from controlplane.api import make_app
from controlplane.config import ApiToken, ConfigError, hash_token, read_tokens_file
from controlplane.memory_source import MemorySource
from controlplane.memory_target import MemoryTarget
from controlplane.policy import Check, Policy
from controlplane.service import ControlPlane
from controlplane.state import ControlPlaneState

TOKENS = {"operator": "o" * 24, "grafana": "r" * 24, "alertmanager": "a" * 24}


def tokens() -> tuple[ApiToken, ...]:
    roles = {"operator": "operate", "grafana": "read", "alertmanager": "alerts"}
    return tuple(ApiToken(name, roles[name], bytes.fromhex(hash_token(t)[7:]))
                 for name, t in TOKENS.items())


def control_plane() -> ControlPlane:
    policy = Policy(name="p", service="s", driver="swarm", min=1, max=10, interval_s=15,
                    warmup_s=0, scale_down_stabilization_s=60, strategy="proportional",
                    checks=(Check("load", "sum(load)", for_s=0, target=100),))
    return ControlPlane(ControlPlaneState((policy,)), MemorySource(),
                        {"swarm": MemoryTarget(time.time)})


CASES = [
    # (token, method, path, body, expected status)
    ("grafana", "GET", "/v1/status", None, 200),
    ("grafana", "GET", "/v1/audit", None, 200),
    ("grafana", "POST", "/v1/policies/p/pause", {}, 403),
    ("grafana", "POST", "/v1/alerts", {"alerts": []}, 403),
    ("alertmanager", "GET", "/v1/status", None, 403),
    ("alertmanager", "POST", "/v1/policies/p/pin", {"replicas": 3, "ttl_s": 60}, 403),
    ("alertmanager", "POST", "/v1/alerts", {"version": "4", "status": "firing", "alerts": []},
     200),
    ("operator", "POST", "/v1/policies/p/pause", {"reason": "incident"}, 200),
    (None, "GET", "/v1/status", None, 401),
]


def test_each_role_does_only_its_part_and_the_actor_is_the_token() -> None:
    async def scenario() -> list[str]:
        sock, port = bind_unused_port()
        server = HTTPServer(make_app(control_plane(), tokens()))
        server.add_sockets([sock])
        client = AsyncHTTPClient()

        async def call(token: str | None, method: str, path: str, body: Any = None,
                       headers: dict[str, str] | None = None) -> tuple[int, Any]:
            h = {"Content-Type": "application/json", **(headers or {})}
            if token:
                h["Authorization"] = f"Bearer {TOKENS[token]}"
            resp = await client.fetch(HTTPRequest(
                f"http://127.0.0.1:{port}{path}", method=method, headers=h,
                body=None if body is None else json.dumps(body)), raise_error=False)
            return resp.code, json.loads(resp.body or b"null")

        wrong = []
        try:
            for token, method, path, body, expected in CASES:
                status, data = await call(token, method, path, body)
                if status != expected:
                    wrong.append(f"{token} {method} {path}: {status} {data}")
            # The header cannot name someone else; the body's "by" rides after the token.
            await call("operator", "POST", "/v1/policies/p/resume", {"by": "alice"},
                       headers={"X-Tidedesk-Actor": "mallory"})
            _, audit = await call("grafana", "GET", "/v1/audit")
            who = [(a["action"], a["who"]) for a in audit["audit"]]
            assert ("pause", "operator") in who and ("resume", "operator for alice") in who, who
            assert not any("mallory" in w for _, w in who)
            # Deep or unstorable JSON is a 400, not a 500, here too.
            status, data = await call("operator", "POST", "/v1/events", {"a": "\ud800"})
            assert (status, data["error"]["code"]) == (400, "invalid_text")
        finally:
            server.stop()
        return wrong

    wrong = asyncio.run(scenario())
    assert not wrong, wrong


def test_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# name role secret\nalertmanager alerts {hash_token('a' * 24)}\n"
                    f"grafana read {'r' * 24}\n")
    assert [(t.name, t.role) for t in read_tokens_file(str(path))] == [
        ("alertmanager", "alerts"), ("grafana", "read")]
    path.write_text(f"x admin {'r' * 24}\n")
    with pytest.raises(ConfigError, match="line 1: role must be one of alerts, read, operate"):
        read_tokens_file(str(path))

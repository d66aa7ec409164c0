"""Fuzzing a real ``tidedesk dev`` process: hypothesis over WebSocket frames, and schemathesis
against the OpenAPI document it serves. Either way: no answer >= 500, no uncaught exception in
the server's log, and the server keeps serving.

Schemathesis runs as a bounded subprocess (its own pytest plugin stays out of this run, see
``-p no:schemathesis`` in pyproject.toml).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.processes import free_port, settings_env, wait_ready

# Close codes a fuzzed connection may end with: docs/protocol.md's, "message too big" (1009) and
# Tornado's for a malformed WebSocket message (1007). Never 1011 (server error).
EXPECTED_CLOSE_CODES = {1000, 1007, 1009, 4400, 4401, 4403, 4429}
SCHEMATHESIS_BUDGET_SECS = 45


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[str]
    log: Path
    admin_token: str

    def get(self, path: str) -> tuple[int, Any]:
        with urllib.request.urlopen(self.base + path, timeout=5) as r:
            return r.status, json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def assert_healthy(self) -> None:
        assert self.proc.poll() is None, "the server died"
        assert self.get("/readyz")[0] == 200
        text = self.log.read_text(encoding="utf-8", errors="replace")
        for sign in ("Traceback", "Uncaught exception", '"levelname": "ERROR"', " ERROR "):
            assert sign not in text, text[text.index(sign) - 2000:text.index(sign) + 2000]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = settings_env(TIDEDESK_DATA_DIR=str(data), TIDEDESK_PORT=str(port),
                       TIDEDESK_RATE_LIMIT_IP_PER_MIN="0", TIDEDESK_RATE_LIMIT_TOKEN_PER_MIN="0",
                       TIDEDESK_RATE_LIMIT_PER_10S="10000", TIDEDESK_LOG_FORMAT="text")
    log = data / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tidedesk.cli", "dev"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, "tidedesk dev", log=log.read_text)
        srv = Server(base, proc, log, "")
        srv.admin_token = srv.post("/api/v1/auth/login", {
            "email": "demo@tidedesk.local", "password": "tidedesk-demo"})["access_token"]
        yield srv
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- WebSocket frames ---------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=10)
TYPES = st.sampled_from(["message", "note", "resume", "typing", "read", "status", "close",
                         "transfer", "ping", "hello", "ack", ""]) | st.text(max_size=12)
FIELDS = st.sampled_from(["id", "body", "conversation_id", "after_seq", "seq", "on", "status",
                          "to_agent", "to_pool"]) | st.text(max_size=8)
NUMBERS = st.sampled_from([0, 1, -1, 2**31, 2**53, 2**63, 2**64, -(2**63) - 1]) | st.integers(
    min_value=-(2**70), max_value=2**70)
# Well-formed frames with hostile values: these reach the service, not just the parser.
TYPED = st.builds(
    lambda t, cid, n, body, conv: json.dumps({k: v for k, v in {
        "type": t, "id": cid, "body": body, "after_seq": n, "seq": n, "on": True,
        "status": "away", "to_pool": body or "x", "conversation_id": conv}.items()
        if v is not None}),
    st.sampled_from(["message", "note", "resume", "read", "typing", "status", "transfer"]),
    st.text(max_size=70), NUMBERS, st.text(max_size=50), st.none() | st.text(max_size=40))
FRAME = TYPED | st.one_of(
    st.builds(lambda t, extra: json.dumps({"type": t, **extra}), TYPES,
              st.dictionaries(FIELDS, JSON_VALUES, max_size=5)),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(json.dumps, JSON_VALUES),
)


def _exchange(ws: ClientConnection, frames: list[str | bytes]) -> None:
    """Send the frames then a ping; every answer must be well formed, and the connection
    either answers the ping or was closed with an expected code."""
    try:
        for frame in frames:
            ws.send(frame)
        ws.send(json.dumps({"type": "ping"}))
        while True:
            answer = json.loads(ws.recv(timeout=10))
            assert isinstance(answer.get("type"), str), answer
            if answer["type"] == "error":
                assert isinstance(answer["code"], str) and answer["message"], answer
            if answer["type"] == "pong":
                return
    except ConnectionClosed:
        code = ws.close_code
        assert code in EXPECTED_CLOSE_CODES, (code, ws.close_reason)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAME, min_size=1, max_size=8), as_agent=st.booleans())
# A seq past SQLite's 64-bit integers crashed the connection (found probing by hand; random
# frames rarely reach it, as it needs a conversation with no recent history).
@example(frames=[json.dumps({"type": "resume", "after_seq": 2**70})], as_agent=False)
# Issue 18's security pass: deep nesting (a RecursionError), a lone surrogate and a NUL (which
# no UTF-8 column stores) were each a 500 with a traceback on REST; kept here for the socket.
@example(frames=["[" * 5000 + "]" * 5000], as_agent=False)
@example(frames=['{"type": "message", "id": "m1", "body": "\\ud800"}'], as_agent=False)
@example(frames=['{"type": "message", "id": "m1", "body": "a\\u0000b"}',
                 '{"type": "note", "conversation_id": "x\\udfff", "id": "n", "body": "x"}'],
         as_agent=True)
def test_fuzzed_websocket_frames_never_break_the_server(server: Server, frames: list[Any],
                                                        as_agent: bool) -> None:
    # A new visitor each time: an empty conversation takes other paths than a busy one.
    path, token = (("agent", server.admin_token) if as_agent
                   else ("visitor", server.post("/api/v1/visitors", {})["token"]))
    ws_url = server.base.replace("http", "ws", 1) + f"/ws/{path}?token={token}"
    with connect(ws_url, open_timeout=10, max_size=2**22) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello"
        _exchange(ws, frames)
    assert server.proc.poll() is None


def test_websocket_fuzzing_left_the_server_healthy(server: Server) -> None:
    # Runs after the property test above (file order): nothing logged as an error.
    server.assert_healthy()


# -- REST, from the served OpenAPI document ---------------------------------------------------

@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is in the test extra: pip install -e '.[test]'"
    # Sign-out is left out: fuzzing it with our bearer token would end the sign-in the rest of
    # the run uses (tests/test_security.py covers it).
    cmd = [binary, "run", f"{server.base}/api/v1/openapi.json",
           "--checks", "not_a_server_error", "--max-examples", "15",
           "--max-time", str(SCHEMATHESIS_BUDGET_SECS), "--workers", "1", "--seed", "1",
           "--exclude-path", "/api/v1/auth/logout",
           "-H", f"Authorization: Bearer {server.admin_token}",
           "--report", "ndjson", "--report-dir", str(tmp_path), "--warnings", "off"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=SCHEMATHESIS_BUDGET_SECS + 60, cwd=tmp_path,
                         env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
    server.assert_healthy()
    # And the token still works: the run did not sign itself out or lock anything.
    req = urllib.request.Request(server.base + "/api/v1/me",
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200

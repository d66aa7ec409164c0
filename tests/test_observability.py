"""Observability on a real embedded server: /metrics after real traffic, and JSON log lines
with node, request and conversation ids (the router role's /metrics: tests/test_envelopes.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from websockets.asyncio.client import connect

from tests.support.clients import (
    Http,
    WsClient,
    add_agent,
    agent_socket,
    embedded,
    new_visitor,
    wait_agent_online,
)
from tests.support.metrics import moved, parse_metrics, scrape, value
from tests.support.processes import free_port, settings_env, wait_ready
from tests.support.routing import GENERAL_ONLY
from tidedesk import logs
from tidedesk.broker import INBOUND_QUEUE, BrokerUnavailable, MemoryBroker, node_queue


def test_metrics_move_with_real_traffic(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            assert rt.port is not None
            ann_id = add_agent(rt, "ann@shop.test", max_chats=1)
            before = await scrape(rt.port)
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann_id)
            _, _, vera = await new_visitor(rt, name="Vera", opening=None)
            assert (await vera.say("Where is my parcel?"))["type"] == "ack"
            assigned = await agent.wait_type("assigned")
            conv_id = assigned["conversation_id"]
            await agent.wait_type("message", seq=1)
            # The agent's only slot is taken: Wim's first message queues him.
            _, _, wim = await new_visitor(rt, name="Wim")
            await wim.wait_type("queue", position=1)
            status, _ = await Http(rt).request("POST", "/api/v1/visitors", {"nope": 1})
            assert status == 400

            assert (await agent.say("On its way.", conversation_id=conv_id))["type"] == "ack"
            await vera.wait_type("message", seq=2)
            await agent.wait_type("message", seq=2)  # the agent's own copy of its reply
            during = await scrape(rt.port)

            assert moved(before, during, "tidedesk_connections", role="visitor") == 2
            assert moved(before, during, "tidedesk_connections", role="agent") == 1
            assert moved(before, during, "tidedesk_messages_in_total", role="visitor") == 2
            assert moved(before, during, "tidedesk_messages_in_total", role="agent") == 1
            # Both messages reach both sides (an agent sees its own reply come back); Wim's
            # comes back to Wim.
            assert moved(before, during, "tidedesk_messages_out_total") == 5
            assert moved(before, during, "tidedesk_delivery_latency_seconds_count") == 5
            assert moved(before, during, "tidedesk_http_request_duration_seconds_count",
                         handler="VisitorsHandler", method="POST") == 3
            assert moved(before, during, "tidedesk_http_errors_total", status="400") == 1
            assert moved(before, during, "tidedesk_publish_confirm_seconds_count",
                         queue="inbound") >= 2
            assert moved(before, during, "tidedesk_publish_confirm_seconds_count",
                         queue="delivery") >= 4
            assert moved(before, during, "tidedesk_router_batch_size_sum") == 3
            assert moved(before, during, "tidedesk_router_batch_size_count") >= 1
            assert moved(before, during, "tidedesk_db_write_seconds_count") >= 1
            assert moved(before, during, "tidedesk_messages_stored_total") == 3
            assert moved(before, during, "tidedesk_assignments_total", pool="general") == 1
            assert value(during, "tidedesk_waiting_visitors", pool="general") == 1
            assert moved(before, during, "tidedesk_router_events_total", kind="message") == 3
            assert moved(before, during, "tidedesk_deliveries_published_total") >= 4

            for client in (vera, wim, agent):
                await client.close()
            await asyncio.sleep(0.2)
            after = await scrape(rt.port)
            assert moved(before, after, "tidedesk_connections", role="visitor") == 0
            assert moved(before, after, "tidedesk_connections", role="agent") == 0

    asyncio.run(scenario())


def test_ready_gauge_follows_readiness_at_every_scrape(tmp_path: Path) -> None:
    """A process that loses its broker reports tidedesk_ready 0, like /readyz (503)."""
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            assert rt.port is not None
            assert value(await scrape(rt.port), "tidedesk_ready") == 1
            await rt.broker.close()
            status, body = await Http(rt).request("GET", "/readyz")
            assert (status, body["reason"]) == (503, "broker unavailable")
            assert value(await scrape(rt.port), "tidedesk_ready") == 0

    asyncio.run(scenario())


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The process's log output as JSON lines at DEBUG, as ``tidedesk dev`` would write it."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buf = io.StringIO()
    logs.configure("DEBUG", "json", node_id="node-under-test", stream=buf)
    try:
        yield buf
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def log_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_log_lines_carry_node_request_and_conversation_ids(
        tmp_path: Path, json_log: io.StringIO) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            base = f"http://127.0.0.1:{rt.port}"
            client = AsyncHTTPClient()

            async def post_visitor(headers: dict[str, str]) -> Any:
                return await client.fetch(HTTPRequest(
                    base + "/api/v1/visitors", method="POST", body=b'{"nope": 1}',
                    headers={"Content-Type": "application/json", **headers}), raise_error=False)

            # An incoming id is honoured, on the answer (even an error) and in the access log.
            resp = await post_visitor({"X-Request-ID": "req-abc-1"})
            assert resp.code == 400
            assert resp.headers["X-Request-ID"] == "req-abc-1"
            access = [r for r in log_lines(json_log) if r["logger"] == "tornado.access"]
            assert access and access[-1]["request_id"] == "req-abc-1"
            assert access[-1]["node_id"] == "node-under-test"
            # None, or one that is not an id: a fresh one, never the client's text.
            for headers in ({}, {"X-Request-ID": "two words\tand a tab"}):
                resp = await post_visitor(headers)
                made = resp.headers["X-Request-ID"]
                assert len(made) == 32 and made != headers.get("X-Request-ID")

            # A WebSocket connection keeps its upgrade's id; each frame adds its conversation.
            status, data = await Http(rt).request("POST", "/api/v1/visitors", {"name": "Vera"})
            assert status == 201
            conn = await connect(f"ws://127.0.0.1:{rt.port}/ws/visitor?token={data['token']}",
                                 additional_headers={"X-Request-ID": "ws-conn-7"})
            assert conn.response is not None
            assert conn.response.headers["X-Request-ID"] == "ws-conn-7"
            vera = WsClient(conn)
            assert (await vera.wait_type("hello"))["conversation_id"] is None
            ack = await vera.say("hello there")
            assert ack["type"] == "ack"
            conv_id = vera.of_type("hello")[-1]["conversation_id"]
            await vera.close()
            await asyncio.sleep(0.1)

            lines = log_lines(json_log)
            ingested = [r for r in lines if r["msg"] == "message ingested"]
            assert len(ingested) == 1
            assert ingested[0]["request_id"] == "ws-conn-7"
            assert ingested[0]["conversation_id"] == conv_id
            assert ingested[0]["node_id"] == "node-under-test"
            stored = [r for r in lines if r["msg"] == "message stored"]
            assert len(stored) == 1 and stored[0]["conversation_id"] == conv_id
            assert all(r["level"] in ("debug", "info", "warning", "error") for r in lines)

    asyncio.run(scenario())


def test_log_level_comes_from_settings(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        logs.configure("WARNING", "json", node_id="n1", stream=buf)
        log = logging.getLogger("tidedesk.test")
        log.info("not at warning level")
        with logs.context(conversation_id="c42", request_id="r7"):
            log.warning("kept", extra={"seq": 3})
        log.warning("outside")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = log_lines(buf)
    assert [r["msg"] for r in lines] == ["kept", "outside"]
    assert lines[0]["conversation_id"] == "c42" and lines[0]["request_id"] == "r7"
    assert lines[0]["seq"] == 3 and lines[0]["node_id"] == "n1"
    assert "conversation_id" not in lines[1]


def test_publish_confirms_and_failures_are_counted_by_queue() -> None:
    async def scenario() -> None:
        broker = MemoryBroker(confirm_timeout_s=0.05)
        before = parse_metrics(generate_latest().decode())
        with pytest.raises(BrokerUnavailable):
            await broker.publish(node_queue("n1"), b"not started yet")
        await broker.start()
        with pytest.raises(BrokerUnavailable):  # no router acknowledges it in time
            await broker.publish(INBOUND_QUEUE, b"nobody consumes")
        await broker.publish(node_queue("n1"), b"fine")
        await broker.close()
        after = parse_metrics(generate_latest().decode())
        assert moved(before, after, "tidedesk_publish_failures_total", queue="delivery") == 1
        assert moved(before, after, "tidedesk_publish_failures_total", queue="inbound") == 1
        assert moved(before, after, "tidedesk_publish_confirm_seconds_count",
                     queue="delivery") == 1
        assert moved(before, after, "tidedesk_publish_confirm_seconds_count",
                     queue="inbound") == 0

    asyncio.run(scenario())


def test_tidedesk_dev_writes_json_lines_at_the_level_of_its_settings(tmp_path: Path) -> None:
    """The real command: TIDEDESK_LOG_LEVEL=WARNING keeps info lines out, and the warning of a
    refused request carries the node and request ids."""
    port = free_port()
    env = settings_env(TIDEDESK_DATA_DIR=str(tmp_path), TIDEDESK_PORT=str(port),
                       TIDEDESK_LOG_LEVEL="WARNING", TIDEDESK_NODE_ID="dev-node-9")
    proc = subprocess.Popen([sys.executable, "-m", "tidedesk.cli", "dev"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, "tidedesk dev")
        request = urllib.request.Request(
            base + "/api/v1/visitors", data=b"[]", method="POST",
            headers={"Content-Type": "application/json", "X-Request-ID": "cli-req-5"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400
        assert refused.value.headers["X-Request-ID"] == "cli-req-5"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all(r["level"] in ("warning", "error") for r in lines), lines
    refused_line = [r for r in lines if r.get("request_id") == "cli-req-5"]
    assert len(refused_line) == 1 and refused_line[0]["node_id"] == "dev-node-9"
    assert "400 POST /api/v1/visitors" in refused_line[0]["msg"]


def test_a_fresh_chat_node_exports_zero_connections_for_both_roles(tmp_path: Path) -> None:
    """Before its first client a chat node already has both ``tidedesk_connections`` series
    at 0 (a dashboard's sum and per-node panels see the node from its start)."""
    port = free_port()
    env = settings_env(TIDEDESK_DATA_DIR=str(tmp_path), TIDEDESK_PORT=str(port),
                       TIDEDESK_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "tidedesk.cli", "dev"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, "tidedesk dev")
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            samples = parse_metrics(resp.read().decode())
        for role in ("visitor", "agent"):
            key = ("tidedesk_connections", (("role", role),))
            assert samples.get(key) == 0.0, (role, sorted(k for k in samples
                                                          if k[0] == "tidedesk_connections"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""Webhooks in a cluster: a chat node and a router as processes on RabbitMQ, Redis and
MariaDB; retries travel through RabbitMQ's retry queues (dead-lettering, per-message TTL)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import Http, login, new_visitor, ws
from tests.support.cluster import cluster
from tests.support.waiting import wait_until_async
from tests.support.webhooks import Receiver
from tidedesk.auth import hash_password
from tidedesk.events import retry_delay

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]


def test_a_receiver_stopped_for_a_while_loses_nothing(tmp_path: Path) -> None:
    with cluster(tmp_path, shards=1) as c:
        c.env["TIDEDESK_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
        c.storage.agents.create_sync(email="root@shop.test", name="Root",
                                     password_hash=hash_password("password1"), role="admin",
                                     pools=("general",), max_chats=3, totp_secret=None)
        agent_id = c.add_agent("ann@shop.test")
        node = c.start("chatnode", "node1")
        c.start("router", "router1")

        async def scenario() -> None:
            receiver = Receiver()
            receiver.start()
            http = Http(node)  # type: ignore[arg-type]
            admin = await login(node, "root@shop.test")  # type: ignore[arg-type]
            status, hook = await http.request("POST", "/api/v1/webhooks", {
                "url": receiver.url, "events": ["conversation.created", "message.created",
                                                "conversation.assigned"]}, token=admin)
            assert status == 201, hook
            receiver.secret = hook["secret"]
            console = await ws(node, "/ws/agent",  # type: ignore[arg-type]
                               await login(node, "ann@shop.test"))  # type: ignore[arg-type]
            await wait_until_async("agent online", lambda: c.agent_online(agent_id), 30)
            await asyncio.sleep(2.5)  # the router's hook list is at most 2 s old
            _, _, visitor = await new_visitor(node, name="Vera")  # type: ignore[arg-type]
            await visitor.wait_type("assigned", timeout=15)
            # created, assigned, and the visitor's opening message (which opened the chat)
            await wait_until_async("first events", lambda: len(receiver.received) >= 3, 15)
            # The receiver goes away; the chat goes on.
            port = receiver.port
            receiver.stop()
            started = time.monotonic()
            for i in range(5):
                assert (await visitor.say(f"m{i}"))["type"] == "ack"
            assert time.monotonic() - started < 3

            async def attempted() -> bool:
                _, log = await http.request(
                    "GET", f"/api/v1/webhooks/{hook['id']}/deliveries", token=admin)
                return sum(1 for d in log["deliveries"]
                           if d["event"] == "message.created" and d["attempts"] >= 1
                           and d["status"] == "pending") == 5

            await wait_until_async("failed first attempts", attempted, 15)
            receiver.start(port)  # back after a while: the retries (10 s) find it
            await wait_until_async("every message after the outage",
                                   lambda: len(receiver.events("message.created")) == 6,
                                   retry_delay(1) + 20)
            bodies = sorted((e["ts"], e["data"]["body"])
                            for e in receiver.events("message.created"))
            assert [b for _, b in bodies] == ["Hello"] + [f"m{i}" for i in range(5)]
            assert receiver.bad_signatures == 0
            ids = [e["id"] for e in receiver.received]
            assert len(ids) == len(set(ids))
            _, log = await http.request("GET", f"/api/v1/webhooks/{hook['id']}/deliveries",
                                        token=admin)
            assert {d["status"] for d in log["deliveries"]} == {"delivered"}
            assert sum(1 for d in log["deliveries"]  # the five sent during the outage
                       if d["event"] == "message.created" and d["attempts"] == 2) == 5
            vhost = c.env["TIDEDESK_BROKER_URL"].rsplit("/", 1)[1]
            queues = subprocess.run(["rabbitmqctl", "list_queues", "-p", vhost, "name"],
                                    capture_output=True, text=True, timeout=60).stdout
            assert "tidedesk.webhooks.retry.10s" in queues
            await visitor.close()
            await console.close()
            receiver.stop()

        asyncio.run(scenario())

"""The conversation lifecycle in a cluster (issue 13): two chat nodes and two routers on
RabbitMQ, Redis and MariaDB. Opening the widget takes no slot; an agent who signs out mid-chat
hands it to the other agent with nothing lost, whichever router handles it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from tests.support.clients import Http, WsClient, conversation_of, login, new_visitor, ws
from tests.support.cluster import Cluster, cluster
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]


def open_chats(c: Cluster, agent_id: str) -> int:
    r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
    try:
        raw = r.hget(f"{c.env['TIDEDESK_REDIS_PREFIX']}agent:{agent_id}", "open_chats")
        return int(raw or 0)
    finally:
        r.close()


def test_first_message_opens_and_sign_out_hands_over_across_routers(tmp_path: Path) -> None:
    with cluster(tmp_path, shards=2) as c:
        ann = c.add_agent("ann@shop.test", max_chats=3)
        bob = c.add_agent("bob@shop.test", max_chats=3)
        node1 = c.start("chatnode", "node1")
        node2 = c.start("chatnode", "node2")
        c.start("router", "router1")
        c.start("router", "router2")

        async def scenario() -> None:
            ann_token = await login(node2, "ann@shop.test")  # type: ignore[arg-type]
            ann_ws = await ws(node2, "/ws/agent", ann_token)  # type: ignore[arg-type]
            await ann_ws.wait_type("hello")
            await wait_until_async("ann online", lambda: c.agent_online(ann), 20)
            curious = [await new_visitor(node1, opening=None)  # type: ignore[arg-type]
                       for _ in range(3)]
            assert all(v.of_type("hello")[-1]["conversation_id"] is None for _, _, v in curious)
            await asyncio.sleep(1.0)
            assert open_chats(c, ann) == 0
            _, _, writer = await new_visitor(node1, opening="Do you ship to Oslo?")  # type: ignore[arg-type]
            conv = conversation_of(writer)
            await ann_ws.wait_type("assigned", conversation_id=conv, timeout=15)
            await writer.wait_type("assigned", timeout=15)
            assert open_chats(c, ann) == 1
            assert (await ann_ws.say("Yes we do", conversation_id=conv))["seq"] == 2

            bob_ws: WsClient = await ws(node1, "/ws/agent",  # type: ignore[arg-type]
                                        await login(node1, "bob@shop.test"))  # type: ignore[arg-type]
            await bob_ws.wait_type("hello")
            await wait_until_async("bob online", lambda: c.agent_online(bob), 20)
            status, _ = await Http(node2).request(  # type: ignore[arg-type]
                "POST", "/api/v1/auth/logout", token=ann_token)
            assert status == 200
            handed = await bob_ws.wait_type("assigned", conversation_id=conv, timeout=15)
            assert handed["last_seq"] == 2
            await writer.wait_for(lambda f: f.get("type") == "assigned"
                                  and f["agent"]["id"] == bob, timeout=15)
            await wait_until_async("slots moved", lambda: (open_chats(c, ann), open_chats(c, bob))
                                   == (0, 1), 15)
            assert (await writer.say("thanks!"))["seq"] == 3
            await bob_ws.wait_type("message", seq=3, timeout=15)
            assert (await bob_ws.say("Bob here", conversation_id=conv))["seq"] == 4
            await writer.wait_type("message", seq=4, timeout=15)
            # Delivered as soon as it is durable in the broker; the commit follows (group commit).
            async def all_stored() -> bool:
                return await c.storage.messages.count(conv) == 4

            await wait_until_async("all four stored", all_stored, 15)
            row = await c.storage.conversations.get(conv)
            assert row is not None and (row.state, row.agent_id) == ("assigned", bob)
            for _, _, v in curious:
                await v.close()
            for client in (writer, ann_ws, bob_ws):
                await client.close()

        asyncio.run(scenario())

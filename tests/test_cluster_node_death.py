"""A chat node killed with SIGKILL closes no socket, so no disconnect reaches the routers: its
agents would stay ``online`` with their chats stranded. The routers count them gone from the
moment the node's heartbeat lapses (their presence expires), and the grace period runs from
there exactly as after a disconnect: an agent who reconnects to another node within it keeps
their chats, one who does not has them handed to a free agent of the pool. Real processes
(two chat nodes, two routers) on RabbitMQ, Redis and MariaDB, with a 3 s presence TTL and a 6 s
grace, so the whole story takes seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.clients import WsClient, conversation_of, login, new_visitor, ws
from tests.support.cluster import Cluster, cluster
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

PRESENCE_TTL_S = 3.0  # the smallest the setting takes: a heartbeat every second
GRACE_S = 6.0


def agent_field(c: Cluster, agent_id: str, field: str) -> str | None:
    r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2, decode_responses=True)
    try:
        value = r.hget(f"{c.env['TIDEDESK_REDIS_PREFIX']}agent:{agent_id}", field)
        return str(value) if value is not None else None
    finally:
        r.close()


def owner(c: Cluster, conv: str) -> str | None:
    r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2, decode_responses=True)
    try:
        value = r.get(f"{c.env['TIDEDESK_REDIS_PREFIX']}owner:{conv}")
        return str(value) if value is not None else None
    finally:
        r.close()


def test_a_killed_nodes_agents_give_their_chats_back_after_the_grace(tmp_path: Path) -> None:
    with cluster(tmp_path, shards=2, overrides={
            "TIDEDESK_PRESENCE_TTL_S": str(PRESENCE_TTL_S),
            "TIDEDESK_AGENT_GRACE_S": str(GRACE_S)}) as c:
        ann = c.add_agent("ann@shop.test", max_chats=1)
        carl = c.add_agent("carl@shop.test", max_chats=1)
        bob = c.add_agent("bob@shop.test", max_chats=3)
        # (a Proc has the port the client helpers read from a runtime)
        node1: Any = c.start("chatnode", "node1")
        node2: Any = c.start("chatnode", "node2")
        c.start("router", "router1")
        c.start("router", "router2")

        async def agent_on(node: Any, email: str, agent_id: str) -> WsClient:
            client = await ws(node, "/ws/agent", await login(node, email))
            await client.wait_type("hello", timeout=15)
            await wait_until_async(f"{email} online",
                                   lambda: agent_field(c, agent_id, "status") == "online", 20)
            return client

        async def scenario() -> None:
            # Ann and Carl work on node2 and get one chat each; Bob is on node1 with room.
            ann_ws = await agent_on(node2, "ann@shop.test", ann)
            _, _, v1 = await new_visitor(node1, opening="Where is my parcel?")
            conv1 = conversation_of(v1)
            await v1.wait_for(lambda f: f.get("type") == "assigned"
                              and f["agent"]["id"] == ann, timeout=15)
            carl_ws = await agent_on(node2, "carl@shop.test", carl)
            _, _, v2 = await new_visitor(node1, opening="Can I pay by invoice?")
            conv2 = conversation_of(v2)
            await v2.wait_for(lambda f: f.get("type") == "assigned"
                              and f["agent"]["id"] == carl, timeout=15)
            bob_ws = await agent_on(node1, "bob@shop.test", bob)

            killed = time.monotonic()
            c.procs[1].kill()  # node2, SIGKILL: no close frame, no disconnect, no sign-out
            # Gone once the heartbeat lapses (at most the TTL, then a router's tick) ...
            await wait_until_async("carl counted gone", lambda: agent_field(
                c, carl, "status") == "offline", PRESENCE_TTL_S + 10)
            assert agent_field(c, carl, "lapsed_from") == "online"
            assert owner(c, conv1) == ann and owner(c, conv2) == carl  # the grace runs
            # ... and Carl's console reconnects to node1 within the grace: he keeps his chat.
            carl_again = await ws(node1, "/ws/agent", await login(node1, "carl@shop.test"))
            hello = await carl_again.wait_type("hello", timeout=15)
            assert conv2 in [conv["conversation_id"] for conv in hello["conversations"]]
            await wait_until_async("carl online again", lambda: agent_field(
                c, carl, "status") == "online", 15)

            # Ann does not come back: after the grace her chat goes to Bob, with its history.
            handed = await bob_ws.wait_type("assigned", conversation_id=conv1,
                                            timeout=PRESENCE_TTL_S + GRACE_S + 15)
            assert time.monotonic() - killed >= GRACE_S, "given back before the grace was over"
            assert handed["last_seq"] == 1
            await v1.wait_for(lambda f: f.get("type") == "assigned"
                              and f["agent"]["id"] == bob, timeout=15)
            assert (await v1.say("still there?"))["seq"] == 2
            await bob_ws.wait_type("message", seq=2, conversation_id=conv1, timeout=15)

            # Carl's grace (from the same lapse) is over too, and his chat stayed his.
            await asyncio.sleep(1.5)
            assert owner(c, conv2) == carl
            assert not any(f.get("conversation_id") == conv2
                           for f in bob_ws.of_type("assigned"))
            assert (await carl_again.say("Yes, by invoice", conversation_id=conv2))["seq"] == 2
            await v2.wait_type("message", seq=2, timeout=15)
            assert await c.storage.messages.count(conv1) == 2
            assert await c.storage.messages.count(conv2) == 2
            for client in (v1, v2, bob_ws, carl_again, ann_ws, carl_ws):
                await client.close()

        asyncio.run(scenario())

"""Cluster mode on real servers: chat nodes and routers as separate processes on RabbitMQ,
Redis and two MariaDB shards."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.clients import WsClient, login, new_visitor, ws
from tests.support.cluster import cluster
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]


async def agent_on(node: object, email: str) -> WsClient:
    client = await ws(node, "/ws/agent", await login(node, email))  # type: ignore[arg-type]
    await client.wait_type("hello")
    return client


def test_two_nodes_two_routers_200_conversations(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        agents = [c.add_agent(f"agent{i}@shop.test", max_chats=20) for i in range(10)]
        node1 = c.start("chatnode", "node1")
        node2 = c.start("chatnode", "node2")
        c.start("router", "router1")
        c.start("router", "router2")

        async def scenario() -> None:
            # Agents on node 2, visitors on node 1.
            consoles = [await agent_on(node2, f"agent{i}@shop.test") for i in range(10)]
            await wait_until_async("the agents online at the routers",
                                   lambda: all(c.agent_online(a) for a in agents), 30)
            # In waves of 50: each visitor now also waits for its opening message's ack, and
            # 200 at once overflow the HTTP client's queue on a busy machine.
            visitors = []
            for wave in range(0, 200, 50):
                visitors += await asyncio.gather(*(new_visitor(node1, name=f"v{i}")  # type: ignore[arg-type]
                                                   for i in range(wave, wave + 50)))
            for _, _, v in visitors:
                await v.wait_type("assigned", timeout=30)
            # Like the console, each agent catches up on an assigned chat from its last_seq:
            # the visitor's first message (it opened the chat) may have been delivered before
            # the chat had an owner. The agents' `assigned` frames travel apart from the
            # visitors' (another node), so wait for all of them first.
            await wait_until_async(
                "every console told of its chats",
                lambda: sum(len(k.of_type("assigned")) for k in consoles) == 200, 30)
            for console in consoles:
                for frame in console.of_type("assigned"):
                    await console.send({"type": "resume", "after_seq": 0,
                                        "conversation_id": frame["conversation_id"]})
            started = time.monotonic()

            async def converse(v: WsClient) -> None:
                conv = v.of_type("hello")[-1]["conversation_id"]
                for i in range(3):
                    ack = await v.say(f"{conv} question {i}")
                    assert ack["type"] == "ack", ack

            await asyncio.gather(*(converse(v) for _, _, v in visitors))
            # Every agent answers every chat of theirs once.
            replies = []
            for console in consoles:
                for frame in console.of_type("assigned"):
                    replies.append(console.say("answer", conversation_id=frame["conversation_id"]))
            acks = await asyncio.gather(*replies)
            assert all(a["type"] == "ack" for a in acks)
            for _, _, v in visitors:
                await v.wait_for(lambda f: f.get("type") == "message" and f["from"] == "agent",
                                 timeout=30)
            for console in consoles:  # the agents' own replies come back to them too
                for frame in console.of_type("assigned"):
                    conv = frame["conversation_id"]
                    await console.wait_for(lambda f, conv=conv: f.get("type") == "message"
                                           and f["conversation_id"] == conv and f["seq"] == 5,
                                           timeout=30)
            elapsed = time.monotonic() - started
            print(f"\n200 conversations x 4 messages through 2 nodes + 2 routers: {elapsed:.1f}s")

            owners = {}
            for console, agent_id in zip(consoles, agents, strict=True):
                mine = [f["conversation_id"] for f in console.of_type("assigned")]
                assert len(mine) <= 20
                for conv in mine:
                    assert conv not in owners, "a conversation with two owners"
                    owners[conv] = agent_id
                    got = [f for f in console.of_type("message") if f["conversation_id"] == conv]
                    seqs = sorted(f["seq"] for f in got)
                    assert seqs == [1, 2, 3, 4, 5], (conv, seqs)  # each delivered exactly once
            assert len(owners) == 200
            for _, _, v in visitors:
                conv = v.of_type("hello")[-1]["conversation_id"]
                seqs = sorted(f["seq"] for f in v.of_type("message"))
                assert seqs == [1, 2, 3, 4, 5], (conv, seqs)
                assert await c.storage.messages.count(conv) == 5
                await v.close()
            for console in consoles:
                await console.close()

        asyncio.run(scenario())

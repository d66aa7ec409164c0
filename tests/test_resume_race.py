"""A resume raced against live sends across two chat nodes (issue 17): on one connection the
replay goes out in seq order and live deliveries wait behind it (recovery, then join)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.support.clients import WsClient, login, new_visitor, ws
from tests.support.cluster import cluster
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.mariadb, pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.slow]

ITERATIONS = 40


def test_resume_races_live_sends_on_two_nodes(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.env["TIDEDESK_RATE_LIMIT_PER_10S"] = "10000"  # the agent sends as fast as acks come
        agent_id = c.add_agent("racer@shop.test", max_chats=5)
        nodes = [c.start("chatnode", "node1"), c.start("chatnode", "node2")]
        c.start("router", "router1")

        async def scenario() -> None:
            console = await ws(nodes[0], "/ws/agent",  # type: ignore[arg-type]
                               await login(nodes[0], "racer@shop.test"))  # type: ignore[arg-type]
            await console.wait_type("hello")
            await wait_until_async("the agent online", lambda: c.agent_online(agent_id), 30)
            _, token, visitor = await new_visitor(nodes[1], name="v")  # type: ignore[arg-type]
            assigned = await console.wait_type("assigned", timeout=30)
            conv = assigned["conversation_id"]
            stop = asyncio.Event()
            acked: list[int] = []

            async def agent_talks() -> None:
                while not stop.is_set():
                    ack = await console.say(f"line {len(acked)}", conversation_id=conv)
                    assert ack["type"] == "ack", ack
                    acked.append(ack["seq"])
                    await asyncio.sleep(random.uniform(0, 0.01))

            talking = asyncio.create_task(agent_talks())
            await visitor.close()
            seen = 0  # the highest seq the visitor has, every one below it included
            bad: list[tuple[int, int, list[int]]] = []
            deadline = time.monotonic() + 90
            try:
                for i in range(ITERATIONS):
                    assert time.monotonic() < deadline, "the race took too long"
                    # Disconnected a moment: a few agent messages are missed.
                    await asyncio.sleep(random.uniform(0.02, 0.12))
                    node = nodes[i % 2]
                    client: WsClient = await ws(node, "/ws/visitor", token)  # type: ignore[arg-type]
                    await client.wait_type("hello", timeout=10)
                    await client.send({"type": "resume", "after_seq": seen})
                    await asyncio.sleep(random.uniform(0.05, 0.2))  # live ones keep coming
                    await client.close()
                    seqs = [f["seq"] for f in client.of_type("message")]
                    if seqs != list(range(seen + 1, seen + 1 + len(seqs))):
                        bad.append((i, seen, seqs))
                    # Carry on from what this connection showed without a hole.
                    for seq in seqs:
                        if seq == seen + 1:
                            seen = seq
            finally:
                stop.set()
                await asyncio.gather(talking, return_exceptions=True)
            assert not bad, f"resume out of order or with holes (iteration, after, seqs): {bad}"
            assert len(acked) > ITERATIONS, "the agent hardly talked: no race was run"
            # Every acked message is stored once, under the seq its ack gave (after the
            # visitor's opening message, seq 1).
            async def all_stored() -> bool:
                return await c.storage.messages.count(conv) >= len(acked) + 1

            await wait_until_async("every acked message stored", all_stored, 20)
            stored: list[int] = []
            while len(stored) < len(acked) + 1:
                page = await c.storage.messages.page(conv, after_seq=stored[-1] if stored else 0,
                                                     limit=500, include_private=True)
                if not page:
                    break
                stored += [m.seq for m in page]
            assert stored == [1, *sorted(acked)]
            assert await c.storage.messages.count(conv) == len(acked) + 1
            await console.close()

        asyncio.run(scenario())

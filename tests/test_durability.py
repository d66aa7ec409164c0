"""Guarantees across an embedded restart, and batched history writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import REGISTRY

from tests.support.clients import (
    add_agent,
    agent_socket,
    embedded,
    new_visitor,
    wait_agent_online,
    ws,
)
from tests.support.routing import GENERAL_ONLY


def test_restart_keeps_history_seqs_and_the_queue(tmp_path: Path) -> None:
    async def first_life() -> tuple[str, str, int, str, str]:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            nia_id = add_agent(rt, "nia@shop.test", max_chats=1)
            agent = await agent_socket(rt, "nia@shop.test")
            await wait_agent_online(rt, nia_id)
            _, token, visitor = await new_visitor(rt)
            conv_id = visitor.of_type("hello")[-1]["conversation_id"]
            await visitor.wait_type("assigned")
            last = 0
            for i in range(5):
                last = (await visitor.say(f"before restart {i}"))["seq"]
            _, queued_token, queued = await new_visitor(rt, name="patient")
            queued_conv = queued.of_type("hello")[-1]["conversation_id"]
            await queued.wait_type("queue")
            _, _, vip = await new_visitor(rt, name="vip", tags=["vip"])
            await vip.wait_type("queue", position=1)  # a VIP goes ahead of the earlier visitor
            await queued.wait_type("queue", position=2)
            for c in (visitor, queued, vip, agent):
                await c.close()
            return token, conv_id, last, queued_token, queued_conv

    async def second_life(token: str, conv_id: str, last: int, queued_token: str,
                          queued_conv: str) -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            visitor = await ws(rt, "/ws/visitor", token)
            hello = await visitor.wait_type("hello")
            assert hello["conversation_id"] == conv_id and hello["last_seq"] >= last
            await visitor.send({"type": "resume", "after_seq": 0})
            await visitor.wait_type("message", seq=last)
            assert [m["seq"] for m in visitor.of_type("message")] == list(range(1, last + 1))
            # A new message never reuses a seq, even though the counter lived in memory.
            after = await visitor.say("after restart")
            assert after["seq"] > last
            # The waiting visitor is still waiting, still behind the VIP.
            queued = await ws(rt, "/ws/visitor", queued_token)
            q_hello = await queued.wait_type("hello")
            assert (q_hello["conversation_id"], q_hello["state"]) == (queued_conv, "queued")
            assert (await queued.wait_type("queue"))["position"] == 2
            await visitor.close()
            await queued.close()

    args = asyncio.run(first_life())
    asyncio.run(second_life(*args))


def _batch_count() -> float:
    value = REGISTRY.get_sample_value("tidedesk_router_batch_size_count")
    return value or 0.0


def test_history_is_written_in_batches(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            oz_id = add_agent(rt, "oz@shop.test", max_chats=20)
            agent = await agent_socket(rt, "oz@shop.test")
            await wait_agent_online(rt, oz_id)
            visitors = [await new_visitor(rt, opening=None) for _ in range(20)]
            batches_before = _batch_count()

            async def chatter(client: object) -> None:
                for i in range(10):
                    frame = {"type": "message", "id": f"b{i}", "body": f"m{i}"}
                    await client.send(frame)  # type: ignore[attr-defined]

            await asyncio.gather(*(chatter(v[2]) for v in visitors))
            for _, _, client in visitors:
                await client.wait_for(lambda f: f.get("type") == "ack" and f["id"] == "b9",
                                      timeout=10)
            batches = _batch_count() - batches_before
            stored = 0
            for _, _, client in visitors:
                conv = client.of_type("hello")[-1]["conversation_id"]
                stored += await rt.storage.messages.count(conv)
                assert sorted(a["seq"] for a in client.of_type("ack")) == list(range(1, 11))
            assert stored == 200
            assert batches < 200 / 4, f"{batches} batches for 200 messages: not batching"
            for _, _, client in visitors:
                await client.close()
            await agent.close()

    asyncio.run(scenario())

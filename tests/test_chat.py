"""End-to-end chat behaviour on a real embedded server (Tornado on 127.0.0.1, real WebSocket
clients, SQLite history): round trip, idempotency, resume, assignment limits and queues."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.clients import (
    Http,
    add_agent,
    agent_socket,
    embedded,
    new_visitor,
    wait_agent_online,
)
from tests.support.routing import GENERAL_ONLY
from tests.support.waiting import wait_until_async


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_visitor_agent_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            ann = add_agent(rt, "ann@shop.test")
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            visitor_id, _, visitor = await new_visitor(rt, name="Vera", opening=None)
            assert visitor.of_type("hello") == [{
                "type": "hello", "visitor_id": visitor_id, "conversation_id": None,
                "last_seq": 0, "state": "new", "available": True}]
            # The first message opens the conversation: a new hello names it before the ack.
            ack = await visitor.say("Hello, is my order shipped?")
            assert ack == {"type": "ack", "id": ack["id"], "seq": 1}
            hello = visitor.of_type("hello")[-1]
            conv_id = hello["conversation_id"]
            assert conv_id and hello["state"] == "queued" and hello["last_seq"] == 0
            assert visitor.frames.index(hello) < visitor.frames.index(ack)
            assigned = await agent.wait_type("assigned")
            assert assigned["conversation_id"] == conv_id
            assert assigned["visitor"]["name"] == "Vera"
            await visitor.wait_type("assigned")
            got = await agent.wait_type("message", seq=1)
            assert got["body"] == "Hello, is my order shipped?"
            assert got["from"] == "visitor" and got["conversation_id"] == conv_id

            reply = await agent.say("Yes, this morning.", conversation_id=conv_id)
            assert reply["type"] == "ack" and reply["seq"] == 2
            back = await visitor.wait_type("message", seq=2)
            assert back["from"] == "agent" and back["body"] == "Yes, this morning."

            # History says the same, in seq order.
            token = await _token(rt, "ann@shop.test")
            status, data = await Http(rt).request(
                "GET", f"/api/v1/conversations/{conv_id}/messages?after_seq=0", token=token)
            assert status == 200
            assert [m["seq"] for m in data["messages"]] == [1, 2]
            assert visitor_id
            await visitor.close()
            await agent.close()

    run(scenario())


async def _token(rt: object, email: str) -> str:
    from tests.support.clients import login

    return await login(rt, email)  # type: ignore[arg-type]


def test_repeated_client_id_is_stored_once_with_the_same_ack(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            bo = add_agent(rt, "bo@shop.test")
            agent = await agent_socket(rt, "bo@shop.test")
            await wait_agent_online(rt, bo)
            _, _, visitor = await new_visitor(rt)
            conv_id = visitor.of_type("hello")[-1]["conversation_id"]
            first = await visitor.say("only once", client_id="dup-1")
            visitor.frames.clear()
            again = await visitor.say("only once", client_id="dup-1")
            assert first == again
            later = await visitor.say("next")
            assert later["seq"] == first["seq"] + 1
            await agent.wait_type("message", seq=later["seq"])
            assert await rt.storage.messages.count(conv_id) == 3  # the opening message + 2
            # The agent saw the duplicated message once.
            assert len([f for f in agent.of_type("message") if f["id"] == "dup-1"]) == 1
            await visitor.close()
            await agent.close()

    run(scenario())


def test_reconnect_with_resume_gets_exactly_the_missed_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            cy = add_agent(rt, "cy@shop.test")
            agent = await agent_socket(rt, "cy@shop.test")
            await wait_agent_online(rt, cy)
            _, token, visitor = await new_visitor(rt)
            conv_id = visitor.of_type("hello")[-1]["conversation_id"]
            await agent.wait_type("assigned")
            seen = (await visitor.say("hi"))["seq"]
            await visitor.close()

            bodies = ["one", "two", "three"]
            for body in bodies:
                assert (await agent.say(body, conversation_id=conv_id))["type"] == "ack"

            from tests.support.clients import ws

            back = await ws(rt, "/ws/visitor", token)
            hello = await back.wait_type("hello")
            assert hello["conversation_id"] == conv_id and hello["last_seq"] == seen + 3
            await back.send({"type": "resume", "after_seq": seen})
            for seq in range(seen + 1, seen + 4):
                await back.wait_type("message", seq=seq)
            await asyncio.sleep(0.2)
            got = back.of_type("message")
            assert [m["body"] for m in got] == bodies
            assert [m["seq"] for m in got] == [seen + 1, seen + 2, seen + 3]
            await back.close()
            await agent.close()

    run(scenario())


def test_fifty_visitors_five_agents_limits_queue_and_vip_first(tmp_path: Path) -> None:
    """5 agents × 3 slots: 15 chats assigned, 35 wait with correct positions; as chats close
    the queue drains VIP first, then first-in first-out; no agent ever exceeds 3."""

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            agents = {}
            for i in range(5):
                agent_id = add_agent(rt, f"a{i}@shop.test", max_chats=3)
                agents[f"a{i}"] = await agent_socket(rt, f"a{i}@shop.test")
                await wait_agent_online(rt, agent_id)
            vip_at = {20, 33}  # the 21st and 34th visitors are VIPs
            visitors = []
            for i in range(50):
                tags = ["vip"] if i in vip_at else []
                _, _, client = await new_visitor(rt, name=f"v{i}", tags=tags)
                conv_id = client.of_type("hello")[-1]["conversation_id"]
                visitors.append((i, conv_id, client))
                if i < 15:
                    await client.wait_type("assigned")
                else:
                    await client.wait_type("queue")
            await asyncio.sleep(0.3)

            def open_chats() -> dict[str, set[str]]:
                out: dict[str, set[str]] = {}
                for name, sock in agents.items():
                    mine: set[str] = set()
                    for f in sock.frames:
                        if f["type"] == "assigned":
                            mine.add(f["conversation_id"])
                        elif f["type"] == "closed":
                            mine.discard(f["conversation_id"])
                    out[name] = mine
                return out

            assert sorted(len(v) for v in open_chats().values()) == [3, 3, 3, 3, 3]
            waiting = [v for v in visitors if v[0] >= 15]
            expected_order = ([v for v in waiting if v[0] in vip_at]
                              + [v for v in waiting if v[0] not in vip_at])
            for position, (_, _, client) in enumerate(expected_order, start=1):
                await client.wait_for(lambda f: f.get("type") == "queue")
                last = client.of_type("queue")[-1]
                assert last["position"] == position, (position, client.of_type("queue"))
            queue = await rt.store.waiting("general")
            assert [c for c, _ in queue] == [v[1] for v in expected_order]

            # Close chats one at a time; each frees a slot for the head of the queue.
            served = []
            for round_no in range(10):
                chats = open_chats()
                name = sorted(chats)[round_no % 5]
                conv_id = sorted(chats[name])[0]
                await agents[name].send({"type": "close", "conversation_id": conv_id})
                await agents[name].wait_type("closed", conversation_id=conv_id)
                head = expected_order[round_no]
                await head[2].wait_type("assigned", timeout=5)
                served.append(head[0])
                for sock_name, mine in open_chats().items():
                    assert len(mine) <= 3, (sock_name, mine)
                    load = await rt.store.agent_get(agents[sock_name].of_type("hello")[-1]
                                                    ["agent_id"])
                    assert load is not None and load.open_chats <= 3
            assert served == [e[0] for e in expected_order[:10]]
            # Remaining visitors moved up ten places.
            first_left = expected_order[10][2]
            await first_left.wait_for(lambda f: f.get("type") == "queue" and f["position"] == 1)
            for _, _, client in visitors:
                await client.close()
            for sock in agents.values():
                await sock.close()

    run(scenario())


def test_nobody_online_makes_an_offline_ticket(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            _, _, visitor = await new_visitor(rt, name="Late")
            conv_id = visitor.of_type("hello")[-1]["conversation_id"]
            await visitor.wait_type("state", state="offline")
            ack = await visitor.say("Please call me back tomorrow")
            assert ack["type"] == "ack"
            tickets = await rt.storage.tickets.all()
            assert [t.conversation_id for t in tickets] == [conv_id]
            await visitor.close()

    run(scenario())


def test_transfer_to_another_agent_and_private_notes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            first_id = add_agent(rt, "first@shop.test", max_chats=1)
            second_id = add_agent(rt, "second@shop.test", max_chats=1)
            first = await agent_socket(rt, "first@shop.test")
            await wait_agent_online(rt, first_id)
            _, _, visitor = await new_visitor(rt)
            conv_id = (await first.wait_type("assigned"))["conversation_id"]
            second = await agent_socket(rt, "second@shop.test")
            await wait_agent_online(rt, second_id)
            note = "VIP customer, be nice"
            await first.send({"type": "note", "conversation_id": conv_id, "id": "n1",
                              "body": note})
            await first.wait_type("ack", id="n1")
            await first.send({"type": "transfer", "conversation_id": conv_id,
                              "to_agent": second_id})
            await first.wait_type("unassigned", conversation_id=conv_id)
            await second.wait_type("assigned", conversation_id=conv_id)
            await visitor.wait_type("assigned", timeout=5)
            await wait_until_async("the visitor to be told of the new agent",
                                   lambda: visitor.of_type("assigned")[-1]["agent"]["id"]
                                   == second_id, 5, every=0.05)
            # The new owner can read the note; the visitor never sees it.
            await second.send({"type": "resume", "conversation_id": conv_id, "after_seq": 0})
            got = await second.wait_type("message", id="n1")
            assert got["private"] is True
            await visitor.send({"type": "resume", "after_seq": 0})
            await asyncio.sleep(0.3)
            assert not [f for f in visitor.of_type("message") if f["id"] == "n1"]
            # The old owner may no longer write there.
            await first.send({"type": "message", "conversation_id": conv_id, "id": "x1",
                              "body": "still mine?"})
            err = await first.wait_type("error")
            assert err["code"] == "forbidden"
            assert first_id != second_id
            for c in (visitor, first, second):
                await c.close()

    run(scenario())


def test_outside_business_hours_a_waiting_chat_becomes_a_ticket(tmp_path: Path) -> None:
    """An agent who is free still answers; nobody free outside hours means a ticket, not a
    queue."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    opens = (now + dt.timedelta(hours=2)).strftime("%H:%M")
    closes = (now + dt.timedelta(hours=3)).strftime("%H:%M")
    routing = GENERAL_ONLY + (f"business_hours: {{timezone: UTC, open: '{opens}', "
                              f"close: '{closes}', days: [mon, tue, wed, thu, fri, sat, sun]}}\n")

    async def scenario() -> None:
        async with embedded(tmp_path, routing) as rt:
            rae = add_agent(rt, "rae@shop.test", max_chats=1)
            agent = await agent_socket(rt, "rae@shop.test")
            await wait_agent_online(rt, rae)
            _, _, first = await new_visitor(rt)
            await first.wait_type("assigned")
            _, _, second = await new_visitor(rt)
            await second.wait_type("state", state="offline")
            assert not second.of_type("queue")
            conv = second.of_type("hello")[-1]["conversation_id"]
            assert [t.conversation_id for t in await rt.storage.tickets.all()] == [conv]
            for c in (first, second, agent):
                await c.close()

    run(scenario())


def test_vip_falls_back_after_max_wait_and_keeps_priority(tmp_path: Path) -> None:
    routing = """
vip_tags: [vip]
rules:
  - name: vip
    match: {tags: [vip]}
    pool: experts
    fallback: general
    max_wait_s: 1
  - name: everyone
    pool: general
"""

    async def scenario() -> None:
        async with embedded(tmp_path, routing) as rt:
            sam = add_agent(rt, "sam@shop.test", max_chats=1)  # general only; nobody in experts
            agent = await agent_socket(rt, "sam@shop.test")
            await wait_agent_online(rt, sam)
            _, _, first = await new_visitor(rt)
            await first.wait_type("assigned")
            _, _, regular = await new_visitor(rt)
            await regular.wait_type("queue", position=1)
            _, _, vip = await new_visitor(rt, tags=["vip"])
            await vip.wait_type("queue", position=1)  # first in the experts queue
            # After max_wait_s it moves to general, still ahead of the regular visitor.
            await regular.wait_type("queue", position=2, timeout=5)
            assert [c for c, _ in await rt.store.waiting("general")] == [
                vip.of_type("hello")[-1]["conversation_id"],
                regular.of_type("hello")[-1]["conversation_id"]]
            assert await rt.store.waiting("experts") == []
            for c in (first, regular, vip, agent):
                await c.close()

    run(scenario())

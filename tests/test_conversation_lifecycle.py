"""The conversation lifecycle on a real embedded server (issue 13): the widget opens no
conversation, agents who leave give their chats back, take and assign, tickets, idle close."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.clients import (
    add_agent,
    agent_socket,
    embedded,
    new_visitor,
    wait_agent_online,
)
from tests.support.routing import GENERAL_ONLY


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_opening_the_widget_takes_no_slot_the_first_message_does(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            ann = add_agent(rt, "ann@shop.test", max_chats=3)
            agent = await agent_socket(rt, "ann@shop.test")
            await wait_agent_online(rt, ann)
            curious = [await new_visitor(rt, opening=None) for _ in range(3)]
            for _, _, client in curious:
                hello = client.of_type("hello")[-1]
                assert (hello["conversation_id"], hello["state"]) == (None, "new")
            await asyncio.sleep(0.3)  # anything the sockets could have started has happened
            load = await rt.store.agent_get(ann)
            assert load is not None and (load.open_chats, load.max_chats) == (0, 3)
            assert agent.of_type("assigned") == []
            assert await rt.storage.conversations.open_for_visitor(curious[0][0]) is None

            # A fourth who writes is assigned at once; the three stay without a conversation.
            _, _, writer = await new_visitor(rt, opening=None)
            ack = await writer.say("Do you ship to Norway?")
            assert ack["seq"] == 1
            await writer.wait_type("assigned")
            assigned = await agent.wait_type("assigned")
            assert assigned["conversation_id"] == writer.of_type("hello")[-1]["conversation_id"]
            got = await agent.wait_type("message", seq=1)
            assert got["body"] == "Do you ship to Norway?"
            load = await rt.store.agent_get(ann)
            assert load is not None and load.open_chats == 1
            # Curious visitors can still ping, resume and type without opening anything.
            idle = curious[0][2]
            await idle.send({"type": "typing", "on": True})
            await idle.send({"type": "resume", "after_seq": 0})
            await idle.send({"type": "ping"})
            await idle.wait_type("pong")
            assert idle.of_type("error") == []
            for _, _, client in [*curious, (None, None, writer)]:
                await client.close()
            await agent.close()

    run(scenario())

"""Bounded idempotency memory (issue 17): the store remembers a conversation's newest client
ids only; the database's unique key answers a late resend with its original seq."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.clients import conversation_of, embedded, new_visitor, ws
from tests.support.routing import GENERAL_ONLY
from tidedesk.store import CLIENT_IDS_PER_CONVERSATION, MemoryStore


def test_late_resend_gets_its_original_seq_and_is_stored_once(tmp_path: Path) -> None:
    async def first_life() -> tuple[str, str, int]:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            _, token, visitor = await new_visitor(rt, opening=None)
            original = (await visitor.say("the first", client_id="late-1"))["seq"]
            conv = conversation_of(visitor)  # the first message opened it
            await visitor.say("the second", client_id="late-2")
            # The bounded memory forgets (as it does past CLIENT_IDS_PER_CONVERSATION newer ids,
            # after a quiet day, or on close): the resend still gets its seq.
            assert isinstance(rt.store, MemoryStore)
            await rt.store.drop_client_ids(conv)
            assert conv not in rt.store._client_ids
            again = await visitor.say("the first", client_id="late-1")
            assert (again["type"], again["seq"]) == ("ack", original)
            third = await visitor.say("the third", client_id="late-3")
            assert third["seq"] == original + 2  # a new id takes the next seq, no gap
            assert await rt.storage.messages.count(conv) == 3
            assert len(rt.store._client_ids[conv].seqs) <= CLIENT_IDS_PER_CONVERSATION
            await visitor.close()
            return token, conv, original

    async def second_life(token: str, conv: str, original: int) -> None:
        # A restart loses the whole memory (and the counter): the database still answers.
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            visitor = await ws(rt, "/ws/visitor", token)
            await visitor.wait_type("hello")
            again = await visitor.say("the first", client_id="late-1")
            assert (again["type"], again["seq"]) == ("ack", original)
            fresh = await visitor.say("after the restart", client_id="late-4")
            assert fresh["seq"] > original + 2
            assert await rt.storage.messages.count(conv) == 4
            await visitor.send({"type": "resume", "after_seq": 0})
            await visitor.wait_type("message", seq=fresh["seq"])
            seqs = [m["seq"] for m in visitor.of_type("message")]
            assert seqs == sorted(set(seqs)) and seqs.count(original) == 1
            await visitor.close()

    token, conv, original = asyncio.run(first_life())
    asyncio.run(second_life(token, conv, original))

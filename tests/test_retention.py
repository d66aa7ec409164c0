"""Retention (issue 18): closed conversations older than the setting go, with their messages
and history; open and recent ones stay; two routers running the job at once delete each
conversation once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from routernode.retention import RetentionJob
from tests.support.clients import embedded
from tests.support.routing import GENERAL_ONLY
from tidedesk.runtime import Runtime

DAY = 86400.0


async def conversation(rt: Runtime, conv_id: str, state: str, age_days: float) -> None:
    main = rt.storage.shards[0]
    at = time.time() - age_days * DAY
    with main.db.connection_context():
        main["Conversation"].create(id=conv_id, visitor_id="v1", state=state, created_at=at,
                                    updated_at=at)
    await rt.storage.messages.insert([{
        "conversation_id": conv_id, "seq": 1, "client_id": "c1", "sender_type": "visitor",
        "sender_id": "v1", "sender_name": "", "body": "hello", "private": False, "ts": at}])
    await rt.store.seed_seq(conv_id, 1)
    await rt.store.history_append(conv_id, {"seq": 1, "body": "hello"})


def test_old_closed_conversations_go_once_and_the_rest_stay(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The server's own job stays off (0): the two below are the "routers".
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            await conversation(rt, "a" * 32, "closed", 40)
            await conversation(rt, "b" * 32, "closed", 45)
            await conversation(rt, "c" * 32, "closed", 10)  # recent
            await conversation(rt, "d" * 32, "assigned", 90)  # old but open
            jobs = [RetentionJob(storage=rt.storage, store=rt.store, days=30, owner=name)
                    for name in ("router-1", "router-2")]
            counts = await asyncio.gather(*(job.run_once() for job in jobs))
            assert sorted(counts) == [0, 2]  # one router held the lease
            for gone in ("a" * 32, "b" * 32):
                assert await rt.storage.conversations.get(gone) is None
                assert await rt.storage.messages.count(gone) == 0
                assert await rt.store.history(gone) == []
            for kept in ("c" * 32, "d" * 32):
                assert await rt.storage.conversations.get(kept) is not None
                assert await rt.storage.messages.count(kept) == 1
            assert await jobs[0].run_once() == 0  # nothing left, lease released
            [entry] = await rt.storage.audit.entries(action="retention.")
            assert entry.detail == {"conversations": 2, "days": 30}

    asyncio.run(scenario())

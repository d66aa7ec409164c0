"""Group commit (issue 17): a row that finds no write in flight is written at once; rows that
arrive while one is in flight go together into the next write, at most BATCH_MAX_ROWS each."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import REGISTRY

from routernode.router import BATCH_MAX_ROWS, Batcher, InOrder
from tidedesk.storage import Storage


def _batches() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("tidedesk_router_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("tidedesk_router_batch_size_sum") or 0.0
    return count, total


def _row(seq: int) -> dict[str, object]:
    return {"conversation_id": "gc-conv", "seq": seq, "client_id": f"gc-{seq}",
            "sender_type": "visitor", "sender_id": "v", "sender_name": "V", "body": "hi",
            "private": False, "ts": 1.0}


def test_group_commit_writes_at_once_then_gathers(tmp_path: Path) -> None:
    storage = Storage([f"sqlite:///{tmp_path / 'gc.sqlite3'}"], pool_size=2)
    storage.migrate_all()

    async def body() -> None:
        batcher = Batcher(storage)
        before = _batches()
        await batcher.add(_row(1))  # a quiet desk: one row, one write, no timer
        after_one = _batches()
        assert (after_one[0] - before[0], after_one[1] - before[1]) == (1, 1)
        first = asyncio.ensure_future(batcher.add(_row(2)))
        await asyncio.sleep(0)  # the write of row 2 is in flight now
        rest = [asyncio.ensure_future(batcher.add(_row(seq))) for seq in range(3, 3 + 250)]
        await asyncio.gather(first, *rest)
        done = _batches()
        # row 2 alone, then 250 rows gathered behind it: 100 + 100 + 50
        assert done[1] - after_one[1] == 251
        assert done[0] - after_one[0] == 1 + -(-250 // BATCH_MAX_ROWS)
        assert await storage.messages.count("gc-conv") == 252

    try:
        asyncio.run(body())
    finally:
        storage.close()


def test_in_order_runs_each_key_in_arrival_order_and_forgets_idle_keys() -> None:
    async def body() -> None:
        order = InOrder()
        ran: list[int] = []

        async def step(i: int) -> None:
            async with order.section("k"):
                await asyncio.sleep(0.001 * (5 - i))  # the earlier ones take longer
                ran.append(i)

        await asyncio.gather(*(step(i) for i in range(5)))
        assert ran == [0, 1, 2, 3, 4]
        assert not order._waiting

    asyncio.run(body())


def test_in_order_skips_a_cancelled_waiter_and_passes_on_a_section_handed_to_one() -> None:
    async def body(cancel_when_handed: bool) -> None:
        order = InOrder()
        ran: list[str] = []
        release = asyncio.Event()

        async def step(name: str) -> None:
            async with order.section("k"):
                ran.append(name)
                if name == "first":
                    await release.wait()

        first = asyncio.create_task(step("first"))
        await asyncio.sleep(0)
        middle = asyncio.create_task(step("middle"))
        last = asyncio.create_task(step("last"))
        await asyncio.sleep(0)
        if not cancel_when_handed:
            middle.cancel()  # while it waits behind first
            await asyncio.sleep(0)
        release.set()
        if cancel_when_handed:
            await asyncio.sleep(0)  # first leaves and hands the section to middle ...
            middle.cancel()  # ... which is cancelled before it resumes: last still gets it
        await asyncio.gather(first, middle, last, return_exceptions=True)
        assert middle.cancelled() and ran == ["first", "last"] and not order._waiting

    for cancel_when_handed in (False, True):
        asyncio.run(asyncio.wait_for(body(cancel_when_handed), 5))

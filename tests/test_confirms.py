"""PendingConfirms on its own, without RabbitMQ: the tag order, ``multiple``, nacks, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tidedesk.broker import BrokerUnavailable
from tidedesk.confirms import ConfirmLost, PendingConfirms


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_tags_count_from_one_and_acks_settle_up_to_theirs() -> None:
    async def body() -> None:
        pending = PendingConfirms()
        futs = [pending.expect(deadline=100.0) for _ in range(4)]
        assert list(pending) == [1, 2, 3, 4]
        pending.settle(2, multiple=True, nack=False)
        assert [f.done() for f in futs] == [True, True, False, False]
        pending.settle(4, multiple=False, nack=True)
        assert isinstance(futs[3].exception(), BrokerUnavailable)
        assert list(pending) == [3]
        pending.settle(3, multiple=False, nack=False)
        assert futs[2].result() is None and not pending

    run(body)


def test_expire_fails_only_what_is_past_its_deadline() -> None:
    async def body() -> None:
        pending = PendingConfirms()
        early, late = pending.expect(deadline=10.0), pending.expect(deadline=20.0)
        pending.expire(now=10.0)
        with pytest.raises(BrokerUnavailable, match="did not confirm in time"):
            early.result()
        assert not late.done() and list(pending) == [2]
        pending.fail_all("connection lost")
        with pytest.raises(BrokerUnavailable, match="connection lost"):
            late.result()
        assert not pending

    run(body)


def test_a_future_given_up_on_is_left_alone() -> None:
    async def body() -> None:
        pending = PendingConfirms()
        fut = pending.expect(deadline=10.0)
        fut.cancel()
        pending.settle(1, multiple=False, nack=True)
        assert fut.cancelled() and not pending

    run(body)


class _Recorder:
    """A waiter of the caller's own (the RabbitMQ broker hands in its publish batches)."""

    def __init__(self) -> None:
        self.outcome: object = None

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, result: None, /) -> None:
        self.outcome = "ok"

    def set_exception(self, exception: BaseException, /) -> None:
        self.outcome = exception


def test_any_waiter_is_settled_like_a_future() -> None:
    async def body() -> None:
        pending = PendingConfirms()
        acked, nacked, lost = _Recorder(), _Recorder(), _Recorder()
        for w in (acked, nacked, lost):
            pending.expect_for(w, deadline=10.0)
        assert list(pending) == [1, 2, 3]
        pending.settle(1, multiple=False, nack=False)
        pending.settle(2, multiple=False, nack=True)
        pending.fail_all("connection lost")
        assert acked.outcome == "ok"
        assert isinstance(nacked.outcome, BrokerUnavailable)
        assert isinstance(lost.outcome, ConfirmLost)

    run(body)

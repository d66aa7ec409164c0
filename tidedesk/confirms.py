"""Publisher-confirm bookkeeping for one RabbitMQ connection (used by :mod:`tidedesk.rabbitmq`).

A confirm channel numbers its publishes 1, 2, 3 ... (delivery tags) and the broker answers each
with ``basic.ack`` or ``basic.nack``, possibly for every tag up to one (``multiple``). Each
publish waits on its own future here, with a monotonic deadline. Settling:

- an ack resolves the futures it covers; a nack, a passed deadline or a lost connection fails
  them with :class:`~tidedesk.broker.BrokerUnavailable`, so the sender retries;
- a future that is already done (its publisher gave up) is left as it is.

What waits need not be a future: anything with a future's ``done``, ``set_result`` and
``set_exception`` (:class:`Waiter`) will do; the RabbitMQ broker hands in its publish batches,
so one confirm settles every caller of a batch without a hop through the event loop.

No pika here: the broker adapter hands in the confirm's tag, ``multiple`` flag and kind.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Protocol

from tidedesk.broker import BrokerUnavailable


class ConfirmLost(BrokerUnavailable):
    """The connection or its channel went before the confirm: the broker may or may not have
    the message, so publishing it again (it is idempotent downstream) is safe."""


class Waiter(Protocol):
    """What a confirm settles (an ``asyncio.Future[None]`` is one)."""

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class PendingConfirms(OrderedDict[int, tuple[Waiter, float]]):
    """Delivery tag -> (waiter, monotonic deadline), oldest first (tags only grow)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_tag = 1

    def expect(self, deadline: float) -> asyncio.Future[None]:
        """The future of the publish just written, which takes the next delivery tag."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.expect_for(fut, deadline)
        return fut

    def expect_for(self, waiter: Waiter, deadline: float) -> None:
        """Like :meth:`expect`, for a waiter of the caller's own."""
        self[self.next_tag] = (waiter, deadline)
        self.next_tag += 1

    def settle(self, tag: int, *, multiple: bool, nack: bool) -> None:
        """Apply one ``basic.ack`` (or ``basic.nack`` when ``nack``) for ``tag``."""
        settled: list[Waiter] = []
        if multiple:
            while self:
                first = next(iter(self))
                if first > tag:
                    break
                settled.append(self.popitem(last=False)[1][0])
        elif tag in self:
            settled.append(self.pop(tag)[0])
        for fut in settled:
            if fut.done():
                continue
            if nack:
                fut.set_exception(BrokerUnavailable("RabbitMQ refused the message (nack); retry"))
            else:
                fut.set_result(None)

    def expire(self, now: float) -> None:
        """Fail every publish whose deadline is ``now`` or earlier."""
        while self:
            tag = next(iter(self))
            fut, deadline = self[tag]
            if deadline > now:
                break
            del self[tag]
            if not fut.done():
                fut.set_exception(BrokerUnavailable("RabbitMQ did not confirm in time; retry"))

    def fail_all(self, why: str) -> None:
        """Fail every publish still waiting (the connection or its channel went)."""
        while self:
            _, (fut, _) = self.popitem(last=False)
            if not fut.done():
                fut.set_exception(ConfirmLost(why))

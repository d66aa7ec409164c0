"""Readiness polling: wait until something is true, instead of sleeping for a fixed time.

One argument order everywhere: ``wait_until(what, probe, timeout)``. ``what`` names the
condition for the failure message, ``probe`` returns something truthy once it holds (that value
is returned), and ``timeout`` is in seconds. A probe that raises counts as "not yet" (a server
that is starting fails in many ways); the last error is named if time runs out.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

# Probes of servers and containers are cheap; 0.2 s keeps a waiting test from spinning a core
# that other tests on this machine share, yet notices a change well within a second.
DEFAULT_EVERY_S = 0.2


class _Poll:
    """The deadline of one wait, and the failure that names what was awaited."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what, self.timeout = what, timeout
        self.deadline = time.monotonic() + timeout

    def done(self, value: object, error: BaseException | None) -> bool:
        """Whether ``value`` (the probe's answer) ends the wait; raises once time is up."""
        if value:
            return True
        if time.monotonic() > self.deadline:
            detail = f"last error: {error!r}" if error else f"last: {value!r}"
            raise AssertionError(f"timed out after {self.timeout:.0f}s waiting for "
                                 f"{self.what} ({detail})")
        return False


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, *,
               every: float = DEFAULT_EVERY_S,
               errors: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy, and return
    that; raise AssertionError naming ``what`` after ``timeout`` seconds. Exceptions in
    ``errors`` raised by the probe count as a falsy answer."""
    poll = _Poll(what, timeout)
    while True:
        try:
            value, error = probe(), None
        except errors as exc:
            value, error = None, exc
        if poll.done(value, error):
            return cast(T, value)
        time.sleep(every)


async def wait_until_async(what: str, probe: Callable[[], T | Awaitable[T | None] | None],
                           timeout: float, *, every: float = DEFAULT_EVERY_S,
                           errors: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """:func:`wait_until` for coroutines: the same contract, but it yields to the event loop
    between calls, so the clients whose state ``probe`` reads keep running. ``probe`` must
    not block; it may be a coroutine function (its result is awaited)."""
    poll = _Poll(what, timeout)
    while True:
        try:
            answer = probe()
            value, error = (await answer if inspect.isawaitable(answer) else answer), None
        except errors as exc:
            value, error = None, exc
        if poll.done(value, error):
            return cast(T, value)
        await asyncio.sleep(every)

"""Readiness polling: wait until something is true, instead of sleeping for a fixed time.

One argument order everywhere: ``wait_until(what, probe, timeout)``. ``what`` names the
condition for the failure message, ``probe`` returns something truthy once it holds (that value
is returned), and ``timeout`` is in seconds. A probe that raises counts as "not yet" (a server
that is starting fails in many ways); the last error is named if time runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")

# Probes of servers and containers are cheap; 0.2 s keeps a waiting test from spinning a core
# that other tests on this machine share, yet notices a change well within a second.
DEFAULT_EVERY_S = 0.2


class _Poll(Generic[T]):
    """One wait: each :meth:`done` calls the probe once, and raises once time is up."""

    def __init__(self, what: str, probe: Callable[[], T | None], timeout: float,
                 errors: tuple[type[BaseException], ...]) -> None:
        self.what, self.probe, self.timeout, self.errors = what, probe, timeout, errors
        self.deadline = time.monotonic() + timeout
        self.value: T | None = None

    def done(self) -> bool:
        error: BaseException | None = None
        try:
            self.value = self.probe()
        except self.errors as exc:
            self.value, error = None, exc
        if self.value:
            return True
        if time.monotonic() > self.deadline:
            detail = f"last error: {error!r}" if error else f"last: {self.value!r}"
            raise AssertionError(f"timed out after {self.timeout:.0f}s waiting for "
                                 f"{self.what} ({detail})")
        return False


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, *,
               every: float = DEFAULT_EVERY_S,
               errors: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy, and return
    that; raise AssertionError naming ``what`` after ``timeout`` seconds. Exceptions in
    ``errors`` raised by the probe count as a falsy answer."""
    poll = _Poll(what, probe, timeout, errors)
    while not poll.done():
        time.sleep(every)
    return cast(T, poll.value)


async def wait_until_async(what: str, probe: Callable[[], T | None], timeout: float, *,
                           every: float = DEFAULT_EVERY_S,
                           errors: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """:func:`wait_until` for coroutines: the same contract, but it yields to the event loop
    between calls, so the clients whose state ``probe`` reads keep running. ``probe`` must
    not block."""
    poll = _Poll(what, probe, timeout, errors)
    while not poll.done():
        await asyncio.sleep(every)
    return cast(T, poll.value)

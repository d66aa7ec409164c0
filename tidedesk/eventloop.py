"""Which asyncio event loop a process runs on (issue 17): ``TIDEDESK_EVENT_LOOP`` is ``auto``
(uvloop when it is importable, else asyncio's own), ``asyncio`` or ``uvloop``.

Chat nodes, routers and the embedded server start through :func:`run`; pika's
``AsyncioConnection``, Tornado and redis-py's asyncio client only ask for the running loop, so
they run on either. docs/bench.md ("uvloop") has what it measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "asyncio", "uvloop")


class EventLoopUnavailable(RuntimeError):
    """``uvloop`` was asked for but is not installed."""


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of new loops for ``choice``; ``None`` means asyncio's default loop."""
    if choice not in CHOICES:
        raise ValueError(f"event loop must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable("TIDEDESK_EVENT_LOOP=uvloop, but uvloop is not installed "
                                       "(pip install uvloop, or set it to asyncio)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``uvloop`` or ``asyncio``: what the running (or given) loop is, for logs and /readyz."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"

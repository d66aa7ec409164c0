"""Start-up without a crash loop (issue 19): wait for DNS and each backend with jittered
back-off, logging one JSON line per failed attempt (no traceback), until it answers or
``TIDEDESK_STARTUP_WAIT_S`` has passed.

On a first ``docker stack deploy`` the chat nodes and routers start before MariaDB, RabbitMQ and
Redis resolve or listen; exiting on the first ``socket.gaierror`` made Swarm restart each task
several times. :class:`Waiter` keeps the reason of the current wait for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tidedesk.backoff import Backoff

log = logging.getLogger(__name__)


class BackendNotUp(Exception):
    """Raised by a probe: the backend is not usable yet; the message says why."""


class StartupTimeout(Exception):
    """A backend did not come up within the start-up wait; the message names it and why."""


def describe(exc: BaseException) -> str:
    """One line for the log: the error's class and message, the root cause's too."""
    text = f"{type(exc).__name__}: {exc}".strip()
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text[:500]


@dataclass
class Waiter:
    """Runs start-up steps, each retried until it succeeds or the deadline passes."""

    wait_s: float
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    draw: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    waiting_for: str | None = "starting"  # what /readyz reports while not ready

    async def step(self, backend: str, attempt: Callable[[], Awaitable[object]]) -> None:
        """Await ``attempt()`` until it returns; any exception means "not yet" until the wait
        is over, then :class:`StartupTimeout`."""
        deadline = self.clock() + self.wait_s
        tries = 0
        first_failure: float | None = None
        while True:
            try:
                await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = describe(exc)
                self.waiting_for = f"waiting for {backend}: {reason}"
                now = self.clock()
                if first_failure is None:
                    first_failure = now
                if now >= deadline:
                    log.error("backend did not come up; giving up",
                              extra={"backend": backend, "error": reason, "attempts": tries + 1,
                                     "waited_s": round(now - first_failure, 1)})
                    raise StartupTimeout(
                        f"{backend} not reachable after {self.wait_s:g} s "
                        f"(TIDEDESK_STARTUP_WAIT_S): {reason}") from None
                delay = min(self.backoff.delay(tries, self.draw()), max(0.0, deadline - now))
                log.warning("waiting for backend",
                            extra={"backend": backend, "error": reason, "attempt": tries + 1,
                                   "retry_in_s": round(delay, 2)})
                tries += 1
                await self.sleep(delay)
                continue
            if first_failure is not None:
                log.info("backend is up", extra={
                    "backend": backend, "attempts": tries + 1,
                    "waited_s": round(self.clock() - first_failure, 1)})
            self.waiting_for = "starting"
            return

    def done(self) -> None:
        self.waiting_for = None


async def resolve_and_connect(host: str, port: int, timeout_s: float = 3.0) -> None:
    """DNS, then a TCP connection to ``host:port``; raises :class:`BackendNotUp` saying which
    failed (a name that does not resolve yet, or a port nobody listens on)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=1), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise BackendNotUp(f"{host} does not resolve yet ({exc})") from None
    last: BaseException | None = None
    for _family, _type, _proto, _name, addr in infos:
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(str(addr[0]), int(addr[1])), timeout_s)
        except (OSError, TimeoutError) as exc:
            last = exc
            continue
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return
    raise BackendNotUp(f"{host}:{port} does not accept connections yet ({last})")

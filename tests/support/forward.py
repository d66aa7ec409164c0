"""TCP forwarders on loopback, run on their own event loop in a thread:

- :func:`forwarding`: one started late on a chosen port, a backend that "appears" while a
  process waits for it (start-up tests, issue 19);
- :func:`half_open`: one that can *cut* its connections without closing them (issue 17): the
  connections open at the cut stay open and swallow everything sent either way, forever, as a
  broker that restarted behind a NAT or a proxy leaves them (half-open: neither side is told);
  new connections are refused (closed at once) until :meth:`HalfOpen.restore`, after which they
  are forwarded again. The shared RabbitMQ is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                cut: asyncio.Event | None = None) -> None:
    try:
        while data := await src.read(65536):
            if cut is not None and cut.is_set():
                continue  # swallowed: the peer hears nothing, and nothing is closed
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


class HalfOpen:
    """The control of :func:`half_open` (call from any thread)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # the forwarder's, once it runs
        self.refusing = False
        self.cuts: list[asyncio.Event] = []  # one per connection: set = swallowed from now on
        self.accepted = 0

    def cut(self) -> None:
        """Every open connection goes silent (half-open); new ones are refused."""
        def apply() -> None:
            self.refusing = True
            for event in self.cuts:
                event.set()

        assert self.loop is not None
        self.loop.call_soon_threadsafe(apply)

    def restore(self) -> None:
        """New connections are forwarded again; the cut ones stay silent."""
        def apply() -> None:
            self.refusing = False

        assert self.loop is not None
        self.loop.call_soon_threadsafe(apply)


@contextlib.contextmanager
def _serving(listen_port: int, target_port: int, host: str,
             control: HalfOpen | None = None) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    if control is not None:
        control.loop = loop
    started = threading.Event()
    state: dict[str, asyncio.Server] = {}

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if control is not None and control.refusing:
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection(host, target_port)
        except OSError:
            w.close()
            return
        cut = None
        if control is not None:
            cut = asyncio.Event()
            control.cuts.append(cut)
            control.accepted += 1
        with contextlib.suppress(asyncio.CancelledError):  # the forwarder shutting down
            await asyncio.gather(_pipe(r, uw, cut), _pipe(ur, w, cut))

    async def main() -> None:
        state["server"] = await asyncio.start_server(accept, host, listen_port)
        started.set()

    def run() -> None:
        loop.run_until_complete(main())
        loop.run_forever()

    thread = threading.Thread(target=run, name=f"forward-{listen_port}", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError(f"could not listen on {host}:{listen_port}")
    try:
        yield
    finally:
        async def shut() -> None:
            state["server"].close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def forwarding(listen_port: int, target_port: int, host: str = "127.0.0.1") -> Iterator[None]:
    """Listen on ``host:listen_port`` and forward every connection to ``host:target_port``
    until the block ends."""
    with _serving(listen_port, target_port, host):
        yield


@contextlib.contextmanager
def half_open(listen_port: int, target_port: int,
              host: str = "127.0.0.1") -> Iterator[HalfOpen]:
    """Like :func:`forwarding`, with a :class:`HalfOpen` control to cut and restore."""
    control = HalfOpen()
    with _serving(listen_port, target_port, host, control):
        yield control

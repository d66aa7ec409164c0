"""A TCP forwarder started late on a chosen port: a backend that "appears" while a process
waits for it (start-up tests, issue 19). Runs its own event loop in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


@contextlib.contextmanager
def forwarding(listen_port: int, target_port: int, host: str = "127.0.0.1") -> Iterator[None]:
    """Listen on ``host:listen_port`` and forward every connection to ``host:target_port``
    until the block ends."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, asyncio.Server] = {}

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(host, target_port)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))

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

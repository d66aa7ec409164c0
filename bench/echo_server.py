"""The bare baseline: a Tornado WebSocket server that sends every frame back, nothing else.

Usage: ``python bench/echo_server.py PORT [PING_INTERVAL_S]``. ``/healthz`` and ``/readyz``
answer 200 so HAProxy and the benchmarks can check it like a chat node.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import tornado.web
import tornado.websocket


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("ok")


async def main(port: int, ping_interval_s: float) -> None:
    app = tornado.web.Application(
        [(r"/ws.*", Echo), (r"/(?:healthz|readyz)", Health)],
        websocket_ping_interval=ping_interval_s or None,
        websocket_ping_timeout=ping_interval_s or None)
    app.listen(port, "127.0.0.1", backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))

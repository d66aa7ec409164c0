"""P7's baseline server: python-socketio's AsyncServer on Tornado with its AsyncRedisManager, the
relay a Python team would otherwise build. No persistence, no sequence numbers, no routing:
``join`` puts a socket in a room, ``message`` emits to the room named in ``to`` (through Redis,
so it reaches a member connected to the other process) and acknowledges the sender.

Usage: ``python bench/p7_socketio_server.py PORT REDIS_URL CHANNEL``
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import socketio
import tornado.web


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("ok")


async def main(port: int, redis_url: str, channel: str) -> None:
    manager = socketio.AsyncRedisManager(redis_url, channel=channel)
    sio = socketio.AsyncServer(async_mode="tornado", client_manager=manager,
                               cors_allowed_origins="*")

    @sio.on("join")  # type: ignore[untyped-decorator]
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    @sio.on("message")  # type: ignore[untyped-decorator]
    async def message(sid: str, data: dict[str, Any]) -> str:
        await sio.emit("message", data, room=data["to"])
        return "ok"

    app = tornado.web.Application([(r"/socket.io/", socketio.get_tornado_handler(sio)),
                                   (r"/healthz", Health)])
    app.listen(port, "127.0.0.1", backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))

"""A webhook receiver for tests: a real HTTP server on a loopback port, in the test's loop.

It checks each POST's signature with the hook's secret, records what arrived (and the most
requests it had in flight at once), and answers from a script: ``fail_first`` 500s, then 200,
each after ``delay_s``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer

from tidedesk.events import SIGNATURE_HEADER, signature_valid


@dataclass
class Receiver:
    fail_first: int = 0
    delay_s: float = 0.0
    secret: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)  # 2xx-answered, parsed
    attempts: int = 0
    bad_signatures: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    down: bool = False  # answer 503 to everything (a receiver "stopped for a while")
    port: int = 0
    _server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.received if name is None or e["event"] == name]

    async def handle(self, body: bytes, sig: str | None) -> int:
        self.attempts += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not signature_valid(self.secret, body, sig):
                self.bad_signatures += 1
                return 401
            if self.down or self.attempts <= self.fail_first:
                return 500
            self.received.append(json.loads(body))
            return 200
        finally:
            self.in_flight -= 1

    def start(self, port: int = 0) -> None:
        """Listen on ``port`` (0: a free one; the same one again after :meth:`stop`)."""
        receiver = self

        class Handler(tornado.web.RequestHandler):
            async def post(self) -> None:
                self.set_status(await receiver.handle(
                    self.request.body, self.request.headers.get(SIGNATURE_HEADER)))
                self.finish()

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._server = HTTPServer(tornado.web.Application([(r"/hook", Handler)]))
        self._server.add_sockets([sock])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

"""The baseline of P9: a bare Tornado server whose upload handler is Tornado's default (the
whole body buffered in memory before the handler runs), as Tidedesk's handlers were before
issue 15. ``python -m bench.upload_sink PORT``."""

from __future__ import annotations

import asyncio
import sys

import tornado.web
from tornado.httpserver import HTTPServer


class Sink(tornado.web.RequestHandler):
    def post(self) -> None:
        self.set_status(201)
        self.finish({"size": len(self.request.body)})


class Ready(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/api/v1/attachments", Sink), (r"/readyz", Ready)])
    HTTPServer(app, max_body_size=200 * 1024 * 1024).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

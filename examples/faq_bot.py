"""A tiny FAQ bot for Tidedesk: a webhook receiver that answers visitors from the canned
responses, and hands the chat to people when it has no answer.

Run it beside Tidedesk::

    python -m examples.faq_bot --tidedesk http://127.0.0.1:8080 --token tdk_... \\
        --secret <webhook secret> --port 8099

and set it up once (as an admin):

1. an API token named as the bot should appear, with scopes ``messages:write`` and
   ``conversations:read``: ``POST /api/v1/api-tokens``;
2. a webhook to ``http://<bot host>:8099/hook`` for ``message.created``:
   ``POST /api/v1/webhooks`` (its answer holds the secret);
3. the site's bot: ``PUT /api/v1/sites/{site}`` with ``{"bot": {"name": "FAQ Bot",
   "timeout_s": 20, "pool": "general"}}``.

How it answers: a visitor message that contains a canned response's shortcut (``shipping``,
``refund`` ...) as a word gets that response; anything else is handed to people. Each answer's
id is made from the event id, so a webhook delivered twice is answered once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
from typing import Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer

from tidedesk.events import SIGNATURE_HEADER, signature_valid

_WORD = re.compile(r"[a-z0-9_-]+")
_VARIABLE = re.compile(r"\{\{\s*[^{}]*?\s*\}\}")


def best_answer(question: str, canned: list[dict[str, Any]]) -> str | None:
    """The body of the canned response whose shortcut is a word of ``question`` (pure)."""
    words = set(_WORD.findall(question.lower()))
    for item in canned:
        if item["shortcut"].lower() in words:
            return _VARIABLE.sub("", item["body"]).replace("  ", " ").strip()
    return None


class FaqBot:
    def __init__(self, *, tidedesk: str, token: str, secret: str) -> None:
        self.base = tidedesk.rstrip("/")
        self.token = token
        self.secret = secret
        self.http = AsyncHTTPClient()
        self.port = 0
        self._server: HTTPServer | None = None

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        resp = await self.http.fetch(HTTPRequest(
            self.base + path, method=method, body=None if body is None else json.dumps(body),
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"}), raise_error=False)
        return resp.code, json.loads(resp.body or b"null")

    async def on_event(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("event") != "message.created" or data.get("from") != "visitor" \
                or data.get("private"):
            return
        conv = data["conversation_id"]
        _, canned = await self.call("GET", "/api/v1/canned")
        answer = best_answer(data.get("body", ""), (canned or {}).get("canned", []))
        if answer is None:
            await self.call("POST", f"/api/v1/conversations/{conv}/handoff", {})
            return
        await self.call("POST", f"/api/v1/conversations/{conv}/messages",
                        {"id": f"faq-{event['id']}", "body": answer})

    def start(self, port: int = 0, host: str = "127.0.0.1") -> None:
        bot = self

        class Hook(tornado.web.RequestHandler):
            async def post(self) -> None:
                if not signature_valid(bot.secret, self.request.body,
                                       self.request.headers.get(SIGNATURE_HEADER)):
                    self.set_status(401)
                    return
                # Answer the webhook at once; the reply goes through the REST API.
                event = json.loads(self.request.body)
                task = asyncio.ensure_future(bot.on_event(event))
                bot._pending.add(task)
                task.add_done_callback(bot._pending.discard)
                self.set_status(204)

        self._pending: set[asyncio.Future[None]] = set()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._server = HTTPServer(tornado.web.Application([(r"/hook", Hook)]))
        self._server.add_sockets([sock])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tidedesk", required=True, help="Tidedesk's base URL")
    parser.add_argument("--token", required=True, help="the bot's API token")
    parser.add_argument("--secret", required=True, help="the webhook's signing secret")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    async def run() -> None:
        bot = FaqBot(tidedesk=args.tidedesk, token=args.token, secret=args.secret)
        bot.start(args.port, args.host)
        print(f"FAQ bot listening on http://{args.host}:{bot.port}/hook")
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()

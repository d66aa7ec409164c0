"""A chat client that behaves like the widget and the console, for tests that break things.

A :class:`ResilientClient` keeps one WebSocket through HAProxy open; when the node drains (a
``reconnect`` frame, then close 1012) or the connection drops, it connects again (HAProxy picks
another node), sends ``resume`` with the last sequence it holds in unbroken order, and sends
again every message that has no ``ack`` yet, with the same client id. It records everything it
was shown, so the test can compare it with what the database stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import ssl
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from tests.support.waiting import wait_until_async

log = logging.getLogger(__name__)

_ids = itertools.count(1)
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)  # the widget's first steps; a drain needs only one
RESEND_AFTER_S = 3.0  # an unacked message is sent again after this long on a live connection
OPEN_TIMEOUT_S = 10.0


def resume_after(seen: Collection[int]) -> int:
    """What a client sends as ``after_seq`` when it resumes: the end of the unbroken run of
    seqs from 1 that it was shown (0 if it never saw seq 1). A gap is asked for again."""
    n = 0
    while n + 1 in seen:
        n += 1
    return n


@dataclass
class Conversation:
    """What one client knows about one conversation."""

    seen: dict[int, str] = field(default_factory=dict)  # seq -> client message id

    def contiguous(self) -> int:
        """The highest n such that every seq 1..n was seen (0 if seq 1 is missing)."""
        return resume_after(self.seen)


class ResilientClient:
    def __init__(self, name: str, ws_url: str, kind: str,
                 tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ws_url = ws_url  # with ?token=...
        self.kind = kind  # "visitor" | "agent"
        self.tls = tls
        self.conversations: dict[str, Conversation] = {}
        self.conversation_id: str | None = None  # a visitor's own
        self.pending: dict[str, dict[str, Any]] = {}  # client id -> frame, until acked
        self.sent_at: dict[str, float] = {}
        self.acked: dict[str, tuple[str, int]] = {}  # client id -> (conversation, seq)
        self.errors: list[dict[str, Any]] = []
        self.reconnect_frames = 0
        self.connects = 0
        self.states: list[str] = []
        self._conn: ClientConnection | None = None
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self, timeout: float = 20.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"client-{self.name}")
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def stop(self) -> None:
        """Close the connection and end the loop; bounded, so a test's teardown never hangs."""
        self._stop.set()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        if self._task is not None:
            # A connect still in its handshake when stop() ran sees the flag once it opens;
            # anything stuck past the open and close timeouts is cancelled.
            done, _ = await asyncio.wait({self._task}, timeout=OPEN_TIMEOUT_S + 5)
            if not done:
                log.warning("client loop did not end; cancelled", extra={"client": self.name})
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- sending ----------------------------------------------------------------------------
    async def send_message(self, body: str, conversation_id: str | None = None) -> str:
        client_id = f"{self.name}-m{next(_ids)}"
        frame: dict[str, Any] = {"type": "message", "id": client_id, "body": body}
        if self.kind == "agent":
            frame["conversation_id"] = conversation_id
        self.pending[client_id] = frame
        await self._send_pending(client_id)
        return client_id

    async def _send_pending(self, client_id: str) -> None:
        conn, frame = self._conn, self.pending.get(client_id)
        if conn is None or frame is None or not self._connected.is_set():
            return  # sent again after the next connect
        self.sent_at[client_id] = asyncio.get_running_loop().time()
        with contextlib.suppress(ConnectionClosed):
            await conn.send(json.dumps(frame))

    async def wait_acked(self, timeout: float) -> None:
        """Until every message sent so far has its ack; AssertionError after ``timeout``."""
        await wait_until_async(f"{self.name}'s messages to be acked (pending at the start: "
                               f"{sorted(self.pending)[:5]})", lambda: not self.pending, timeout)

    # --- the connection loop ----------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                async with connect(self.ws_url, ssl=self.tls, open_timeout=OPEN_TIMEOUT_S,
                                   max_size=2**22, ping_interval=10) as conn:
                    self._conn = conn
                    if self._stop.is_set():  # stop() ran during the handshake
                        return
                    self.connects += 1
                    attempt = 0
                    await self._session(conn)
            except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
                log.info("connection failed or dropped",
                         extra={"client": self.name, "error": repr(exc)})
            finally:
                self._conn = None
                self._connected.clear()
            if self._stop.is_set():
                return
            delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
            attempt += 1
            await asyncio.sleep(delay * (0.5 + random.random()))

    async def _session(self, conn: ClientConnection) -> None:
        resender = asyncio.create_task(self._resend_loop(conn))
        try:
            async for raw in conn:
                await self._on_frame(conn, json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            resender.cancel()
            await asyncio.gather(resender, return_exceptions=True)

    async def _resend_loop(self, conn: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for cid in list(self.pending):
                if now - self.sent_at.get(cid, 0.0) > RESEND_AFTER_S:
                    await self._send_pending(cid)

    async def _on_frame(self, conn: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "hello":
            await self._on_hello(conn, frame)
        elif kind == "assigned" and self.kind == "agent" and frame.get("conversation_id"):
            self.conversations.setdefault(frame["conversation_id"], Conversation())
        elif kind == "message":
            conv = frame.get("conversation_id") or self.conversation_id
            if conv is not None and isinstance(frame.get("seq"), int):
                self.conversations.setdefault(conv, Conversation()).seen[frame["seq"]] = str(
                    frame.get("id"))
        elif kind == "ack":
            frame_id = str(frame.get("id"))
            sent = self.pending.pop(frame_id, None)
            conv = (sent or {}).get("conversation_id") or self.conversation_id
            if conv is not None and isinstance(frame.get("seq"), int):
                self.acked[frame_id] = (conv, frame["seq"])
                self.conversations.setdefault(conv, Conversation()).seen[frame["seq"]] = frame_id
        elif kind == "reconnect":
            self.reconnect_frames += 1
            await asyncio.sleep(min(int(frame.get("after_ms", 0)), 5000) / 1000)
            await conn.close()
        elif kind == "state":
            self.states.append(str(frame.get("state")))
        elif kind == "error":
            self.errors.append(frame)
            if frame.get("code") == "try_again" and frame.get("id") in self.pending:
                self.sent_at[str(frame["id"])] = 0.0  # the resend loop sends it again

    async def _on_hello(self, conn: ClientConnection, frame: dict[str, Any]) -> None:
        if self.kind == "visitor":
            self.conversation_id = frame.get("conversation_id")
            if self.conversation_id:
                self.states.append(str(frame.get("state")))
                conv = self.conversations.setdefault(self.conversation_id, Conversation())
                await conn.send(json.dumps({"type": "resume", "after_seq": conv.contiguous()}))
        else:
            for item in frame.get("conversations", []):
                cid = item.get("conversation_id")
                if cid:
                    self.conversations.setdefault(cid, Conversation())
            for cid, conv in self.conversations.items():
                await conn.send(json.dumps({"type": "resume", "conversation_id": cid,
                                            "after_seq": conv.contiguous()}))
        self._connected.set()
        for cid in list(self.pending):
            await self._send_pending(cid)

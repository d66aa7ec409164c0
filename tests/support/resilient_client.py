"""A chat client that behaves like the widget and the console, for tests that break things.

One :class:`ResilientClient` serves the Swarm e2e and the chaos tests. It speaks the protocol
the way the widget does: on every ``hello`` it sends ``resume`` after the last seq it was shown
in unbroken order, and it sends again, with the same client id, what has no ``ack`` yet. Every
connection is a :class:`Link` that keeps the frames it was shown, in order, so a test can check
that no connection was shown one (conversation, seq) twice.

How it reconnects is chosen per client (``reconnect``):

- ``"auto"`` (the Swarm e2e, through HAProxy): :meth:`start` runs a loop that connects again
  with the widget's backoff when the node drains (a ``reconnect`` frame, then close 1012) or
  the connection drops; :meth:`send_message` queues a message that is resent until acked.
- ``"on_demand"`` (a chaos visitor): :meth:`open` connects once; a sender that finds the
  connection closed calls :meth:`reconnect`, which waits ``reconnect_delay`` and tries each
  url in order until one says ``hello``.
- ``"never"`` (a chaos console): losing the connection fails the test.

:meth:`send_until_acked` sends one message at a time and records it in a :class:`Ledger`
(first sent, seq, acked at, tries); an ``error`` other than ``try_again`` fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from tests.support.clients import WsClient
from tests.support.waiting import wait_until_async

log = logging.getLogger(__name__)

_ids = itertools.count(1)
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)  # the widget's first steps; a drain needs only one
RESEND_AFTER_S = 3.0  # an unacked message is sent again after this long on a live connection
OPEN_TIMEOUT_S = 10.0
PING_INTERVAL_S = 10.0
HELLO_TIMEOUT_S = 5.0  # open(): a refused connection (busy, draining) closes well within this
# reconnect(): a node gets this long to say hello before the next url is tried; all urls are
# tried again every RECONNECT_ROUND_PAUSE_S until RECONNECT_WITHIN_S has passed.
RECONNECT_HELLO_TIMEOUT_S = 10.0
RECONNECT_ROUND_PAUSE_S = 0.3
RECONNECT_WITHIN_S = 90.0
# send_until_acked(): no ack nor error this long after sending means "send the same id again";
# one message not acked within SEND_DEADLINE_S fails the test; try_again waits a little first.
REPLY_TIMEOUT_S = 20.0
SEND_DEADLINE_S = 150.0
TRY_AGAIN_PAUSE_S = 0.2

Reconnect = Literal["auto", "on_demand", "never"]


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

    seen: dict[int, str] = field(default_factory=dict)  # seq -> client message id (or ack)


# -- the ledger of what was sent one at a time and acked --------------------------------------

@dataclass(eq=False)
class Sent:
    conv: str
    cid: str
    sender: str  # names one sequential sender, e.g. "visitor:<conv>"; its seqs only grow
    first_sent: float
    seq: int | None = None
    acked_at: float | None = None
    tries: int = 0


@dataclass
class Ledger:
    """Every message a group of clients sent with :meth:`ResilientClient.send_until_acked`,
    and every error code they were answered with."""

    sent: list[Sent] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acked(self, since: float = 0.0) -> list[Sent]:
        return [s for s in self.sent if s.acked_at is not None and s.acked_at >= since]

    def acked_seqs(self, conv: str) -> set[int]:
        return {s.seq for s in self.sent if s.conv == conv and s.seq is not None}

    async def wait_acked(self, count: int, since: float = 0.0, *, timeout: float) -> None:
        await wait_until_async(f"{count} acks since t={since:.1f}",
                               lambda: len(self.acked(since)) >= count, timeout)


# -- one connection ---------------------------------------------------------------------------

class Link(WsClient):
    """One connection of a :class:`ResilientClient`: the url it reached, and every frame it
    was shown, in order (each handled by the client before it is kept)."""

    def __init__(self, url: str, conn: ClientConnection,
                 on_frame: Callable[[Link, dict[str, Any]], Awaitable[None]]) -> None:
        super().__init__(conn, lambda frame: on_frame(self, frame))
        self.url = url


# -- the client -------------------------------------------------------------------------------

class ResilientClient:
    def __init__(self, name: str, urls: str | Sequence[str], kind: str,
                 tls: ssl.SSLContext | None = None, *, reconnect: Reconnect = "auto",
                 reconnect_delay: float = 0.0, ledger: Ledger | None = None) -> None:
        self.name = name
        # With ?token=...; "auto" uses the first, reconnect() tries them in order.
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.kind = kind  # "visitor" | "agent"
        self.tls = tls
        self.reconnect_mode: Reconnect = reconnect
        self.reconnect_delay = reconnect_delay  # on_demand: the pause before reconnecting
        self.ledger = ledger if ledger is not None else Ledger()
        self.links: list[Link] = []  # every connection that said hello; the last is current
        self.conversations: dict[str, Conversation] = {}
        self.conversation_id: str | None = None  # a visitor's own
        self.pending: dict[str, dict[str, Any]] = {}  # client id -> frame, until acked
        self.sent_at: dict[str, float] = {}
        self.acked: dict[str, tuple[str, int]] = {}  # client id -> (conversation, seq)
        self.errors: list[dict[str, Any]] = []
        self.reconnect_frames = 0
        self.connects = 0
        self.reconnects: list[tuple[float, float]] = []  # on_demand: (lost at, resumed at)
        self.reconnected_to: list[str] = []  # on_demand: the url each reconnect reached
        self.states: list[str] = []
        self._dialled: list[Link] = []  # every connection opened, so stop() closes them all
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self, timeout: float = 20.0) -> None:
        """``auto``: run the connection loop and wait for the first hello."""
        assert self.reconnect_mode == "auto", "start() runs the auto-reconnect loop"
        self._task = asyncio.create_task(self._run(), name=f"client-{self.name}")
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def open(self, hello_timeout: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
        """Connect once to the first url and return its hello; AssertionError, naming the
        frames (e.g. the ``busy`` error), if it closes first."""
        link = await self._dial(self.urls[0])
        try:
            return await link.wait_type("hello", hello_timeout)
        except AssertionError:
            await link.close()
            raise

    async def stop(self) -> None:
        """Close every connection and end the loop; bounded, so a test's teardown never
        hangs."""
        self._stop.set()
        for link in self._dialled:
            with contextlib.suppress(Exception):
                await link.close()
        if self._task is not None:
            # A connect still in its handshake when stop() ran sees the flag once it opens;
            # anything stuck past the open and close timeouts is cancelled.
            done, _ = await asyncio.wait({self._task}, timeout=OPEN_TIMEOUT_S + 5)
            if not done:
                log.warning("client loop did not end; cancelled", extra={"client": self.name})
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def link(self) -> Link:
        """The current connection (the last that said hello)."""
        return self.links[-1]

    @property
    def connected(self) -> bool:
        return bool(self.links) and self._connected.is_set() and not self.link.closed.done()

    # --- what it was shown ------------------------------------------------------------------
    def convs(self) -> list[str]:
        """A visitor's conversation, or the conversations an agent was assigned, in order."""
        if self.kind == "visitor":
            return [self.conversation_id] if self.conversation_id else []
        return list(dict.fromkeys(f["conversation_id"] for link in self.links
                                  for f in link.of_type("assigned")))

    def shown(self, conv: str) -> set[int]:
        """Seqs of ``conv`` shown in ``message`` frames on any of this client's connections."""
        return {f["seq"] for link in self.links for f in link.of_type("message")
                if f.get("conversation_id") == conv}

    def duplicates(self) -> list[tuple[str, int]]:
        """(conversation, seq) pairs one connection was shown more than once."""
        dups = []
        for link in self.links:
            count = Counter((str(f.get("conversation_id")), int(f["seq"]))
                            for f in link.of_type("message"))
            dups += [key for key, n in count.items() if n > 1]
        return dups

    def _resume_frame(self, conv: str) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "resume", "after_seq": resume_after(self.shown(conv))}
        if self.kind == "agent":
            frame["conversation_id"] = conv
        return frame

    async def resume_gaps(self) -> None:
        """For every conversation with a seq in the ledger not shown yet: send ``resume`` after
        the last unbroken seq (an error reply, e.g. ``try_again``, is answered by the next
        call)."""
        for conv in self.convs():
            if not self.ledger.acked_seqs(conv) - self.shown(conv):
                continue
            with contextlib.suppress(ConnectionClosed):
                await self.link.send(self._resume_frame(conv))

    # --- sending: queued, resent until acked (auto) -----------------------------------------
    def _message_frame(self, client_id: str, body: str,
                       conversation_id: str | None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "message", "id": client_id, "body": body}
        if self.kind == "agent":
            frame["conversation_id"] = conversation_id
        return frame

    async def send_message(self, body: str, conversation_id: str | None = None) -> str:
        client_id = f"{self.name}-m{next(_ids)}"
        self.pending[client_id] = self._message_frame(client_id, body, conversation_id)
        await self._send_pending(client_id)
        return client_id

    async def _send_pending(self, client_id: str) -> None:
        frame = self.pending.get(client_id)
        if frame is None or not self.connected:
            return  # sent again after the next connect
        self.sent_at[client_id] = asyncio.get_running_loop().time()
        with contextlib.suppress(ConnectionClosed):
            await self.link.send(frame)

    async def wait_acked(self, timeout: float) -> None:
        """Until every message sent so far has its ack; AssertionError after ``timeout``."""
        await wait_until_async(f"{self.name}'s messages to be acked (pending at the start: "
                               f"{sorted(self.pending)[:5]})", lambda: not self.pending, timeout)

    # --- sending: one at a time, recorded in the ledger -------------------------------------
    async def send_until_acked(self, sent: Sent) -> None:
        """Send ``sent`` (appended to the ledger by the caller) until it is acked: the same id
        again after a lost connection (reconnecting on demand), no reply in
        ``REPLY_TIMEOUT_S``, or ``try_again``. Any other error, an ack with another seq than
        the first, or no ack in ``SEND_DEADLINE_S`` fails."""
        frame = self._message_frame(sent.cid, f"{sent.cid} from {self.name}", sent.conv)
        deadline = time.monotonic() + SEND_DEADLINE_S
        while time.monotonic() < deadline:
            link = self.link
            if link.closed.done():
                await self.reconnect()
                continue
            start = len(link.frames)
            sent.tries += 1
            try:
                await link.send(frame)
            except ConnectionClosed:
                # Lost: let the reader see the close (it yields), then reconnect.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link.closed), 5)
                await asyncio.sleep(0.05)
                continue
            try:
                reply = await link.wait_for(
                    lambda f: f.get("id") == sent.cid and f.get("type") in ("ack", "error"),
                    timeout=REPLY_TIMEOUT_S, start=start)
            except AssertionError:
                continue  # closed or silent: send the same id again
            if reply["type"] == "ack":
                if sent.seq is None:
                    sent.seq, sent.acked_at = int(reply["seq"]), time.monotonic()
                assert reply["seq"] == sent.seq, f"{sent.cid} acked twice with other seqs"
                return
            code = str(reply.get("code"))
            self.ledger.errors[code] += 1
            self.ledger.error_times.append(time.monotonic())
            assert code == "try_again", f"unexpected error for {sent.cid}: {reply}"
            await asyncio.sleep(TRY_AGAIN_PAUSE_S)
        raise AssertionError(f"{sent.cid} not acked in {SEND_DEADLINE_S}s "
                             f"({sent.tries} tries, last frames {self.link.frames[-4:]})")

    async def reconnect(self) -> None:
        """``on_demand``: like the widget, wait a little, connect to whichever url answers
        first (in order), and resume after the last seq shown (the hello handler does)."""
        if self.reconnect_mode != "on_demand":
            raise AssertionError(f"{self.name} lost its connection: {self.link.closed.result()}")
        lost = time.monotonic()
        await asyncio.sleep(self.reconnect_delay)
        own = self.conversation_id
        deadline = time.monotonic() + RECONNECT_WITHIN_S
        while time.monotonic() < deadline:
            for url in self.urls:
                try:
                    link = await self._dial(url)
                except (OSError, WebSocketException):
                    continue
                try:
                    hello = await link.wait_type("hello", timeout=RECONNECT_HELLO_TIMEOUT_S)
                except AssertionError:  # refused (busy, draining): try again shortly
                    await link.close()
                    continue
                if self.kind == "visitor":
                    assert hello.get("conversation_id") == own, hello
                self.reconnects.append((lost, time.monotonic()))
                self.reconnected_to.append(url)
                return
            await asyncio.sleep(RECONNECT_ROUND_PAUSE_S)
        raise AssertionError(f"{self.name} could not reconnect in {RECONNECT_WITHIN_S}s")

    # --- connections ------------------------------------------------------------------------
    async def _dial(self, url: str) -> Link:
        conn = await connect(url, ssl=self.tls, open_timeout=OPEN_TIMEOUT_S, max_size=2**22,
                             ping_interval=PING_INTERVAL_S)
        link = Link(url, conn, self._on_frame)
        self._dialled.append(link)
        self.connects += 1
        return link

    async def _run(self) -> None:
        """``auto``: connect, live until the connection ends, back off, connect again."""
        attempt = 0
        while not self._stop.is_set():
            try:
                link = await self._dial(self.urls[0])
            except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
                log.info("connection failed", extra={"client": self.name, "error": repr(exc)})
            else:
                if self._stop.is_set():  # stop() ran during the handshake
                    await link.close()
                    return
                attempt = 0
                await self._session(link)
                log.info("connection dropped",
                         extra={"client": self.name, "close": link.closed.result()})
                with contextlib.suppress(Exception):
                    await link.close()
            finally:
                self._connected.clear()
            if self._stop.is_set():
                return
            delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
            attempt += 1
            await asyncio.sleep(delay * (0.5 + random.random()))

    async def _session(self, link: Link) -> None:
        resender = asyncio.create_task(self._resend_loop())
        try:
            await asyncio.wait({link.closed})
        finally:
            resender.cancel()
            await asyncio.gather(resender, return_exceptions=True)

    async def _resend_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for cid in list(self.pending):
                if now - self.sent_at.get(cid, 0.0) > RESEND_AFTER_S:
                    await self._send_pending(cid)

    # --- frames -----------------------------------------------------------------------------
    async def _on_frame(self, link: Link, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "hello":
            await self._on_hello(link, frame)
        elif kind == "assigned" and self.kind == "agent" and frame.get("conversation_id"):
            cid = frame["conversation_id"]
            self.conversations.setdefault(cid, Conversation())
            # Like the console: catch up from the start (the visitor's first message, which
            # opened the chat, may have been delivered before the chat had an owner).
            with contextlib.suppress(ConnectionClosed):
                await link.send(self._resume_frame(cid))
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
            await link.conn.close()
        elif kind == "state":
            self.states.append(str(frame.get("state")))
        elif kind == "error":
            self.errors.append(frame)
            if frame.get("code") == "try_again" and frame.get("id") in self.pending:
                self.sent_at[str(frame["id"])] = 0.0  # the resend loop sends it again

    async def _on_hello(self, link: Link, frame: dict[str, Any]) -> None:
        """The connection becomes current; resume every known conversation after what was
        shown on any connection, then send again what has no ack. A visitor's first message
        makes a second hello on the same connection (it names the new conversation): that
        one only records the conversation."""
        again = link in self.links
        if not again:
            self.links.append(link)
        if self.kind == "visitor":
            self.conversation_id = frame.get("conversation_id")
            if self.conversation_id:
                self.states.append(str(frame.get("state")))
                self.conversations.setdefault(self.conversation_id, Conversation())
                await link.send(self._resume_frame(self.conversation_id))
        else:
            for item in frame.get("conversations", []):
                cid = item.get("conversation_id")
                if cid:
                    self.conversations.setdefault(cid, Conversation())
            for cid in self.conversations:
                await link.send(self._resume_frame(cid))
        self._connected.set()
        if again:
            return
        for cid in list(self.pending):
            await self._send_pending(cid)

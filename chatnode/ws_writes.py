"""Fewer, larger socket writes for a server WebSocket (issue 17).

Tornado writes every message with its own ``send`` and wraps it in a task of its own. An agent's
socket gets many frames at once (a batch of deliveries off the broker, a resume), and one
``send`` per frame was 14% of the chat node's own time in P2. :class:`FrameWriter` queues the
frames a socket is sent during one pass of the event loop and writes them with one ``send`` at
the end of it: the same frames, in the same order, each still its own WebSocket message (the
protocol is unchanged). A single frame waits for nothing but the callbacks already queued.

The frames are built here (RFC 6455 §5.2: a server's final text frame, unmasked) only when the
connection uses no compression extension (this node never offers one); otherwise each goes
through Tornado's ``write_message``.

Reads, likewise: Tornado reads a frame in three to four ``read_bytes`` calls (header, length,
mask, payload). The first leaves the rest of the frame in the stream's buffer, so the stream
stops listening for the socket (``remove_reader``) and starts again for the next frame
(``add_reader``): two ``epoll_ctl`` calls and ~5% of the chat node's interpreter time in P7
(issue 17). :class:`BufferedProtocol13` takes whatever the socket has in one call and cuts
the frames out of its own buffer; Tornado's frame parsing, limits and checks are unchanged.
And :func:`send` hands a write to the socket itself when Tornado's write buffer is empty.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame holding ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload


class FrameWriter:
    """The frames queued for one socket; :meth:`flush` writes them (also before a close)."""

    def __init__(self, handler: WebSocketHandler) -> None:
        self._handler = handler
        self._queued: list[bytes] = []

    def write(self, payload: bytes) -> None:
        self._queued.append(payload)
        if len(self._queued) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        queued, self._queued = self._queued, []
        if not queued:
            return
        handler = self._handler
        conn = handler.ws_connection
        if conn is None or conn.is_closing():
            return  # closed meanwhile: as a write to a closed socket, nothing goes out
        stream = getattr(conn, "stream", None)
        if stream is None or handler.get_compression_options() is not None:
            for payload in queued:
                try:
                    handler.write_message(payload)
                except WebSocketClosedError:
                    return
            return
        try:
            send(stream, b"".join([text_frame(p) for p in queued]))
        except StreamClosedError:
            pass


def send(stream: IOStream, data: bytes) -> None:
    """Write ``data`` to the stream's socket at once when Tornado has nothing queued for it:
    ``IOStream.write`` builds a future, a done callback and a write-buffer entry for every
    write and checks them off again (~10% of the chat node's interpreter time in P7Q50, issue
    17). What the socket does not take (a full send buffer), and any error, goes through
    ``stream.write`` as before, after what was sent: the bytes stay in order, and an error
    closes the stream as Tornado does. TLS streams always take Tornado's path."""
    if (type(stream) is IOStream and not getattr(stream, "_write_buffer", True)
            and not getattr(stream, "_connecting", True) and stream.socket is not None):
        try:
            sent = stream.socket.send(data)
        except OSError:  # BlockingIOError, or a reset that stream.write meets again and closes
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    stream.write(data)


# What one read takes from the socket's buffered bytes at most.
READ_CHUNK_BYTES = 64 * 1024


class BufferedProtocol13(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, its bytes read in chunks of whatever has arrived, and a
    coroutine ``on_message`` run as one task."""

    _rx = b""
    _rx_pos = 0

    async def _read_bytes(self, n: int) -> bytes:
        buf, pos = self._rx, self._rx_pos
        while len(buf) - pos < n:
            assert self.stream is not None
            chunk = await self.stream.read_bytes(READ_CHUNK_BYTES, partial=True)
            buf, pos = buf[pos:] + chunk, 0
        self._rx, self._rx_pos = buf, pos + n
        self._wire_bytes_in += n
        return buf[pos:pos + n]

    def _run_callback(self, callback: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> asyncio.Future[None] | None:
        """Tornado's contract (an error is logged and aborts the connection; the future it
        returns, which the frame loop awaits before reading on, never raises), for a
        coroutine with one task that catches its own error. Tornado wraps it in a task, a
        second future, a done callback and a ``singledispatch`` conversion: 8.4 → 4.4 µs a
        visitor frame (issue 17)."""
        try:
            result = callback(*args, **kwargs)
        except (Exception, asyncio.CancelledError):
            self._failed()
            return None
        if result is None:
            return None
        return asyncio.ensure_future(self._guarded(result))

    async def _guarded(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except (Exception, asyncio.CancelledError):
            self._failed()

    def _failed(self) -> None:
        """The callback raised (the exception being handled): log it, drop the connection."""
        self.handler.log_exception(*sys.exc_info())
        self._abort()


# Tornado's internals that BufferedProtocol13 relies on (6.4 and later); when they change, the
# stock protocol is used.
BUFFERED_READS = all(callable(getattr(WebSocketProtocol13, name, None))
                     for name in ("_read_bytes", "_receive_frame", "_run_callback", "_abort"))

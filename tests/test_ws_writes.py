"""Frames queued in one loop pass go out in one socket write (chatnode/ws_writes.py, issue 17),
still one WebSocket message each, in order (an error frame before the close that follows it:
tests/test_bad_input.py); and the JSON
decoding every frame goes through (tidedesk/safejson.py) answers exactly as the standard
library plus its checks did."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError
from tornado.testing import bind_unused_port
from tornado.websocket import WebSocketHandler, websocket_connect

from chatnode import ws_writes
from chatnode.ws_writes import BufferedProtocol13, FrameWriter, text_frame
from tests.support.clients import Http, add_agent, agent_socket, embedded, new_visitor
from tests.support.routing import GENERAL_ONLY
from tidedesk import safejson


class _Burst(WebSocketHandler):
    writes: list[int] = []

    def open(self) -> None:
        writer = FrameWriter(self)
        sizes = [3, 200, 70_000]  # the three header lengths of RFC 6455
        for i in range(30):
            writer.write(json.dumps({"n": i, "pad": "é" * sizes[i % 3]}).encode())


async def _with_server(body: Any) -> Any:
    sock, port = bind_unused_port()
    srv = HTTPServer(tornado.web.Application([("/ws", _Burst)]))
    srv.add_sockets([sock])
    try:
        return await body(port)
    finally:
        srv.stop()


async def _read(url: str) -> tuple[list[dict[str, Any]], int | None]:
    conn = await websocket_connect(url)
    got: list[dict[str, Any]] = []
    while (raw := await asyncio.wait_for(conn.read_message(), 10)) is not None:
        got.append(json.loads(raw))
        if len(got) == 30:
            break
    code = conn.close_code
    conn.close()
    return got, code


def test_a_burst_is_one_write_of_separate_messages_in_order(monkeypatch: Any) -> None:
    _Burst.writes = []
    real_send = ws_writes.send

    def counting(stream: Any, data: bytes) -> None:
        _Burst.writes.append(len(data))
        real_send(stream, data)

    monkeypatch.setattr(ws_writes, "send", counting)
    got, _ = asyncio.run(_with_server(lambda port: _read(f"ws://127.0.0.1:{port}/ws")))
    assert [f["n"] for f in got] == list(range(30))
    assert all(f["pad"] == "é" * [3, 200, 70_000][f["n"] % 3] for f in got)
    assert len(_Burst.writes) == 1


def test_a_direct_send_keeps_bytes_in_order_and_hands_tornado_what_the_socket_refuses(
) -> None:
    """``send`` writes to the socket itself while Tornado has nothing queued; what a full
    send buffer does not take, and every write behind it, go through ``IOStream.write``, so
    the peer reads every byte once, in order. A peer that is gone closes the stream."""
    async def scenario() -> None:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream = IOStream(a)
        chunks = [bytes([i % 251]) * size for i, size in
                  enumerate([10, 300_000, 7, 50_000, 1, 2_000])]
        ws_writes.send(stream, chunks[0])
        assert not stream.writing()  # the socket took it all
        for chunk in chunks[1:]:
            ws_writes.send(stream, chunk)
        assert stream.writing()  # the rest waits in Tornado's buffer, in order
        b.setblocking(False)
        want, got = b"".join(chunks), bytearray()
        while len(got) < len(want):
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert bytes(got) == want
        b.close()
        for _ in range(3):  # the first send may still be taken; a reset follows
            try:
                ws_writes.send(stream, b"x" * 100_000)
            except StreamClosedError:
                break
            await asyncio.sleep(0.01)
        assert stream.closed()

    asyncio.run(scenario())


def test_text_frame_headers() -> None:
    assert text_frame(b"ab") == b"\x81\x02ab"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


def _stdlib(raw: str | bytes, depth: int) -> tuple[str, Any]:
    try:
        return "ok", safejson._stdlib_loads(raw, depth)
    except safejson.JsonRefused as exc:
        return "refused", exc.code


def _fast(raw: str | bytes, depth: int) -> tuple[str, Any]:
    try:
        return "ok", safejson.loads(raw, depth)
    except safejson.JsonRefused as exc:
        return "refused", exc.code


def test_fast_decoding_answers_as_the_standard_library_did() -> None:
    pieces = ["{", "}", "[", "]", '"', ":", ",", "\\", "u", "0", "d", "8", "a", "1", " ", "e",
              "-", ".", "\x00", "\ud800", "N", "\u00e9", "\\u0000", "\\ud800", "\\ude00",
              '"a"', '"b":', "true", "1e400"]
    rng = random.Random(17)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        for raw in (text,) if "\ud800" in text else (text, text.encode()):
            want, got = _stdlib(raw, 3), _fast(raw, 3)
            assert (got[0], repr(got[1])) == (want[0], repr(want[1])), raw
    deep = "[" * 33 + "]" * 33
    assert _fast(deep, 32) == ("refused", "too_deep")
    assert _fast('{"body": "a\\u0000"}', 32) == ("refused", "invalid_text")
    assert _fast('{"body": "\\ud800"}', 32) == ("refused", "invalid_text")
    assert _fast('{"body": "\\ud83d\\ude00"}', 32) == ("ok", {"body": "\U0001f600"})


def test_chat_sockets_send_small_frames_at_once(tmp_path: Path) -> None:
    """Every chat socket turns Nagle's algorithm off (issue 17). With it on, a frame written
    while the peer had not yet acknowledged the previous one (a visitor's ack right behind
    the echo of their own message) waited for the peer's delayed ACK, up to 40 ms on Linux:
    P2 at one message in flight measured ack p90 45 ms against 4.5 ms for delivery."""
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            add_agent(rt, "ann@shop.test")
            agent = await agent_socket(rt, "ann@shop.test")
            _, _, visitor = await new_visitor(rt, name="Vera", opening=None)
            assert rt.node is not None
            conns = [conn for _, conn in rt.node.hub.connections()]
            assert len(conns) == 2
            for conn in conns:
                sock = conn.ws_connection.stream.socket  # type: ignore[attr-defined]
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            await agent.close()
            await visitor.close()

    asyncio.run(scenario())


def _client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A client's frame: masked, as RFC 6455 requires."""
    mask = bytes(random.randrange(256) for _ in range(4))
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n <= 0xFFFF:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


def test_frames_are_read_whatever_way_the_bytes_arrive(tmp_path: Path) -> None:
    """The chat node reads what the socket has at once and cuts frames out of it
    (BufferedProtocol13, issue 17): two frames in one segment, a frame a byte at a time, a
    message in two fragments with a control ping between them, a 16-bit length, and a frame
    whose end comes with the next one's start are all read as Tornado read them."""
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            status, data = await Http(rt).request("POST", "/api/v1/visitors", {})
            assert status == 201, data
            reader, writer = await asyncio.open_connection("127.0.0.1", rt.port)
            writer.write((f"GET /ws/visitor?token={data['token']} HTTP/1.1\r\n"
                          f"Host: 127.0.0.1:{rt.port}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head

            async def next_json() -> dict[str, Any]:
                while True:
                    opcode, payload = await asyncio.wait_for(_server_frame(reader), 10)
                    if opcode == 0x1:
                        return dict(json.loads(payload))

            assert (await next_json())["type"] == "hello"
            assert rt.node is not None
            assert [type(c.ws_connection) for _, c in rt.node.hub.connections()] \
                == [BufferedProtocol13]  # type: ignore[attr-defined]
            ping = _client_frame(b'{"type":"ping"}')
            writer.write(ping + ping)  # two frames, one segment
            assert [(await next_json())["type"] for _ in range(2)] == ["pong", "pong"]
            for byte in ping:  # one frame, a byte per segment
                writer.write(bytes((byte,)))
                await writer.drain()
                await asyncio.sleep(0.002)
            assert (await next_json())["type"] == "pong"
            # Fragments with a control frame between them (RFC 6455 §5.4).
            writer.write(_client_frame(b'{"type":', fin=False) + _client_frame(b"hi", 0x9)
                         + _client_frame(b'"ping"}', 0x0))
            opcode, payload = await asyncio.wait_for(_server_frame(reader), 10)
            assert (opcode, payload) == (0xA, b"hi")  # the control ping's pong comes first
            assert (await next_json())["type"] == "pong"
            # A 16-bit length, its frame split mid-payload and sent with the next frame's start.
            body = "é" * 300
            message = _client_frame(json.dumps({"type": "message", "id": "m-1",
                                                "body": body}).encode())
            cut = len(message) // 2
            writer.write(message[:cut])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(message[cut:] + ping[:3])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(ping[3:])
            kinds: list[str] = []
            while not {"ack", "pong"} <= set(kinds):  # (a first message opens the chat too)
                kinds.append((await next_json())["type"])
            assert kinds.count("pong") == 1 and kinds.count("ack") == 1, kinds
            writer.close()

    asyncio.run(scenario())


class _Echoing(WebSocketHandler):
    """on_message as a coroutine, on BufferedProtocol13 as the chat sockets are."""

    def get_websocket_protocol(self) -> Any:
        protocol = super().get_websocket_protocol()
        protocol.__class__ = BufferedProtocol13
        return protocol

    async def on_message(self, message: str | bytes) -> None:
        await asyncio.sleep(0.001 if message == "slow" else 0)
        if message == "boom":
            raise RuntimeError("the handler failed")
        self.write_message(message)


def test_a_coroutine_on_message_runs_in_frame_order_and_its_error_aborts(caplog: Any) -> None:
    """BufferedProtocol13 runs a coroutine ``on_message`` as one task (issue 17): the next
    frame is read only once it is done (a slow frame's answer still comes first), and an
    error in it is logged and closes the connection, as Tornado's own wrapping did."""
    async def scenario() -> None:
        sock, port = bind_unused_port()
        srv = HTTPServer(tornado.web.Application([("/ws", _Echoing)]))
        srv.add_sockets([sock])
        try:
            conn = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
            for text in ("slow", "a", "b"):
                await conn.write_message(text)
            got = [await asyncio.wait_for(conn.read_message(), 10) for _ in range(3)]
            assert got == ["slow", "a", "b"]
            await conn.write_message("boom")
            assert await asyncio.wait_for(conn.read_message(), 10) is None  # closed
        finally:
            srv.stop()

    asyncio.run(scenario())
    assert any("the handler failed" in r.getMessage() or (r.exc_info and "the handler failed"
               in str(r.exc_info[1])) for r in caplog.records)

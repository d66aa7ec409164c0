"""haproxy/haproxy.cfg running for real on loopback, in front of an embedded Tidedesk.

The config's own discovery path is used: `server-template` + `resolvers`, with a tiny DNS
server standing in for Docker's (it answers `tasks.chatnode` with 127.0.0.1). Checked: HTTP and
WebSocket chat through HAProxy, TLS 1.3 only, the per-address rate limit answering 429 in the
API's JSON shape, a 503 JSON answer once the chat node stops being ready, the Prometheus
exporter and the stats page.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from websockets.asyncio.client import connect

from tests.deploy.conftest import REPO, require
from tests.support.clients import embedded
from tests.support.http import http_json, insecure_tls
from tests.support.processes import free_port, stop_process
from tests.support.uploads import fetch, upload
from tests.support.waiting import wait_until

pytestmark = pytest.mark.haproxy

RATE_LIMIT = 40  # requests per 10 s per address, low enough to hit here


class TinyDns:
    """Answers every A question with 127.0.0.1 (and AAAA with no records) over UDP."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.questions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(Exception):
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, query: bytes) -> bytes:
        qid, _flags = struct.unpack("!HH", query[:4])
        pos, labels = 12, []
        while query[pos]:
            n = query[pos]
            labels.append(query[pos + 1:pos + 1 + n].decode())
            pos += n + 1
        qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
        question = query[12:pos + 5]
        self.questions.append(".".join(labels))
        answers = b""
        if qtype == 1:  # A
            answers = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4)
                       + socket.inet_aton("127.0.0.1"))
        header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1 if answers else 0, 0, 0)
        return header + question + answers

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture()
def dns() -> Iterator[TinyDns]:
    d = TinyDns()
    yield d
    d.stop()


@contextlib.contextmanager
def haproxy(tls_pem: Path, dns_port: int, backend_port: int,
            log: Path, **extra_env: str) -> Iterator[dict[str, int]]:
    ports = {"http": free_port(), "https": free_port(), "stats": free_port(),
             "runtime": free_port()}
    env = {
        **os.environ,
        "TIDEDESK_TLS_CERT": str(tls_pem),
        "HAPROXY_HTTP_BIND": f"127.0.0.1:{ports['http']}",
        "HAPROXY_HTTPS_BIND": f"127.0.0.1:{ports['https']}",
        "HAPROXY_STATS_BIND": f"127.0.0.1:{ports['stats']}",
        "HAPROXY_DNS": f"127.0.0.1:{dns_port}",
        "CHATNODE_PORT": str(backend_port),
        "CHATNODE_SLOTS": "2",
        "CHATNODE_SLOWSTART": "1s",
        "RATE_LIMIT_REQ_PER_10S": str(RATE_LIMIT),
        "HAPROXY_RUNTIME_BIND": f"ipv4@127.0.0.1:{ports['runtime']}",
        "HTTPS_PORT": str(ports["https"]),  # the port the HTTP -> HTTPS redirect names
        **extra_env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([require("haproxy", "haproxy"), "-db", "-f",
                                 str(REPO / "haproxy" / "haproxy.cfg")],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield ports
    finally:
        stop_process(proc)


def declared_body_status(port: int, length: int) -> int:
    """The status HAProxy answers to a POST that only declares a ``length``-byte body."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/api/v1/visitors")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def wait_http(url: str, status: int, timeout: float = 20.0) -> None:
    tls = insecure_tls() if url.startswith("https:") else None
    wait_until(f"{url} to answer {status}",
               lambda: http_json("GET", url, None, None, 2.0, tls)[0] == status, timeout,
               errors=(OSError,))


def test_chat_through_haproxy_on_loopback(tmp_path: Path, tls_pem: Path, dns: TinyDns) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.port is not None
            with haproxy(tls_pem, dns.port, rt.port, tmp_path / "haproxy.log") as ports:
                http = f"http://127.0.0.1:{ports['http']}"
                https = f"https://127.0.0.1:{ports['https']}"
                # Discovery through the resolvers, then the /readyz check, make it routable.
                await asyncio.to_thread(wait_http, https + "/readyz", 200)
                assert "tasks.chatnode" in dns.questions

                # A visitor over HTTPS + WebSocket (TLS 1.3); plain HTTP redirects.
                status, visitor = await asyncio.to_thread(
                    http_json, "POST", https + "/api/v1/visitors", {"name": "Vera"}, None, 5.0,
                    insecure_tls())
                assert status == 201, visitor
                url = f"wss://127.0.0.1:{ports['https']}/ws/visitor?token={visitor['token']}"
                async with connect(url, ssl=insecure_tls()) as ws:
                    hello = await asyncio.wait_for(ws.recv(), 5)
                    assert '"hello"' in str(hello)
                status, _ = await asyncio.to_thread(
                    http_json, "GET", https + "/readyz", None, None, 5.0, insecure_tls())
                assert status == 200

                # An image through HAProxy (issue 15): a streamed multipart upload, then the
                # bytes over a signed link, with the download's headers intact.
                image = io.BytesIO()
                Image.new("RGB", (120, 80), "orange").save(image, "PNG")
                status, att = await upload(ports["https"], visitor["token"], image.getvalue(),
                                           "photo.png", tls=True)
                assert status == 201, att
                _, _, raw = await fetch(ports["https"], att["url"] + "/link", visitor["token"],
                                        tls=True)
                status, headers, body = await fetch(ports["https"], json.loads(raw)["url"],
                                                    tls=True)
                assert status == 200 and body.startswith(b"\x89PNG")
                assert headers["X-Content-Type-Options"] == "nosniff"

                # TLS 1.2 is refused at the handshake.
                old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
                old.maximum_version = ssl.TLSVersion.TLSv1_2
                with pytest.raises((ssl.SSLError, OSError)):
                    await asyncio.to_thread(http_json, "GET", https + "/readyz", None, None,
                                            5.0, old)

                # Exporter and stats page on the observe port.
                stats = f"http://127.0.0.1:{ports['stats']}"
                status, metrics = await asyncio.to_thread(http_json, "GET", stats + "/metrics")
                assert status == 200 and "haproxy_backend_active_servers" in str(metrics)
                status, _ = await asyncio.to_thread(http_json, "GET", stats + "/stats")
                assert status == 200

                # Issue 18: no /metrics on the public side; a declared body over the JSON limit
                # refused from its headers, before it is sent.
                status, _ = await asyncio.to_thread(http_json, "GET", http + "/metrics")
                assert status == 404
                assert await asyncio.to_thread(declared_body_status, ports["http"],
                                               10 * 1024 * 1024) == 413

                # Past the per-address request rate: 429 with the API's error body.
                answers = [await asyncio.to_thread(http_json, "GET", http + "/healthz")
                           for _ in range(RATE_LIMIT + 5)]
                limited = [body for status, body in answers if status == 429]
                assert limited, [s for s, _ in answers]
                assert limited[0]["error"]["code"] == "rate_limited"

            # The v1 ?token= socket is in HAProxy's log by its path only.
            logged = (tmp_path / "haproxy.log").read_text(errors="replace")
            assert "/ws/visitor" in logged and visitor["token"] not in logged, logged[-2000:]

            # A fresh HAProxy (fresh stick table): once the node drains, /readyz says 503 and
            # HAProxy takes it out of rotation: its own 503 carries the JSON error shape.
            with haproxy(tls_pem, dns.port, rt.port, tmp_path / "haproxy2.log") as ports:
                http = f"http://127.0.0.1:{ports['http']}"
                https = f"https://127.0.0.1:{ports['https']}"
                await asyncio.to_thread(wait_http, https + "/readyz", 200)
                assert rt.node is not None
                await rt.node.drain()
                await asyncio.to_thread(wait_http, https + "/api/v1/openapi.json", 503, 15.0)
                status, body = await asyncio.to_thread(http_json, "GET", http + "/healthz")
                assert status == 503 and body["error"]["code"] == "unavailable", body

    asyncio.run(scenario())

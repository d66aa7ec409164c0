"""haproxy/haproxy.cfg for real (issue 19): plain HTTP redirects to HTTPS except /healthz, and
the certificate is rotated through the runtime API while 50 WebSockets stay open."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from tests.deploy.test_haproxy_live import TinyDns, dns, haproxy, wait_http  # noqa: F401
from tests.support.clients import embedded
from tests.support.http import http_json, insecure_tls

pytestmark = pytest.mark.haproxy

SOCKETS = 50


def raw_get(port: int, path: str, host: str = "shop.example") -> tuple[int, str]:
    """A GET that does not follow redirects: (status, Location)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location") or ""
    finally:
        conn.close()


def test_plain_http_redirects_to_https_except_healthz(
    tmp_path: Path, tls_pem: Path, dns: TinyDns  # noqa: F811
) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.port is not None
            with haproxy(tls_pem, dns.port, rt.port, tmp_path / "haproxy.log") as ports:
                https = f"https://127.0.0.1:{ports['https']}"
                await asyncio.to_thread(wait_http, https + "/readyz", 200)
                for path in ("/console", "/api/v1/auth/login", "/ws/agent?token=x", "/"):
                    status, location = await asyncio.to_thread(raw_get, ports["http"], path)
                    assert status == 301, (path, status)
                    assert location == f"https://shop.example:{ports['https']}{path}", location
                # A Host with a port: the redirect names the HTTPS port, not the HTTP one.
                status, location = await asyncio.to_thread(
                    raw_get, ports["http"], "/console", f"shop.example:{ports['http']}")
                assert location == f"https://shop.example:{ports['https']}/console"
                # /healthz stays plain HTTP (load balancers, monitors) and reaches the node.
                status, location = await asyncio.to_thread(raw_get, ports["http"], "/healthz")
                assert status == 200 and not location
            # On 443 the redirect names no port.
            with haproxy(tls_pem, dns.port, rt.port, tmp_path / "haproxy2.log",
                         HTTPS_PORT="443") as ports:
                await asyncio.to_thread(wait_http, f"https://127.0.0.1:{ports['https']}/readyz",
                                        200)
                status, location = await asyncio.to_thread(raw_get, ports["http"], "/console")
                assert (status, location) == (301, "https://shop.example/console")

    asyncio.run(scenario())


def new_pem(path: Path, cn: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


def served_cn(port: int) -> str:
    """The common name of the certificate a new TLS handshake gets."""
    ctx = insecure_tls()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def runtime_api(port: int, command: str) -> str:
    """One command on HAProxy's runtime API (what swarm/rotate-cert.sh sends via docker exec)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command.encode())
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def test_certificate_rotation_keeps_50_websockets_open(
    tmp_path: Path, dns: TinyDns  # noqa: F811
) -> None:
    live = new_pem(tmp_path / "tls.pem", "old.shop.example")

    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.port is not None
            with haproxy(live, dns.port, rt.port, tmp_path / "haproxy.log",
                         RATE_LIMIT_REQ_PER_10S="1000") as ports:
                https = f"https://127.0.0.1:{ports['https']}"
                await asyncio.to_thread(wait_http, https + "/readyz", 200)
                assert await asyncio.to_thread(served_cn, ports["https"]) == "old.shop.example"
                sockets = []
                for i in range(SOCKETS):
                    status, v = await asyncio.to_thread(
                        http_json, "POST", https + "/api/v1/visitors", {"name": f"v{i}"}, None,
                        5.0, insecure_tls())
                    assert status == 201, v
                    ws = await connect(
                        f"wss://127.0.0.1:{ports['https']}/ws/visitor?token={v['token']}",
                        ssl=insecure_tls(), ping_interval=None)
                    assert '"hello"' in str(await asyncio.wait_for(ws.recv(), 5))
                    sockets.append(ws)
                try:
                    # Rotate: the new PEM is written where the old one was (as a new secret
                    # would be) and handed to HAProxy, which swaps it in memory.
                    fresh = new_pem(tmp_path / "fresh.pem", "new.shop.example").read_text()
                    answer = await asyncio.to_thread(
                        runtime_api, ports["runtime"],
                        f"set ssl cert {live} <<\n{fresh}\n")
                    assert "Transaction created" in answer or "updated" in answer, answer
                    answer = await asyncio.to_thread(runtime_api, ports["runtime"],
                                                     f"commit ssl cert {live}\n")
                    assert "Success" in answer, answer
                    assert await asyncio.to_thread(served_cn, ports["https"]) == \
                        "new.shop.example"
                    # Every WebSocket opened before the rotation is still open and answers.
                    pongs = await asyncio.gather(*(ws.ping() for ws in sockets))
                    await asyncio.wait_for(asyncio.gather(*pongs), 10)
                    assert all(ws.close_code is None for ws in sockets)
                finally:
                    await asyncio.gather(*(ws.close() for ws in sockets),
                                         return_exceptions=True)

    asyncio.run(scenario())

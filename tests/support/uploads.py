"""Uploading attachments to a running server: multipart bodies, and a raw socket for the
requests no well-behaved client sends (a 2 GB Content-Length, a body that never ends)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


def multipart(data: bytes, filename: str = "file.bin", field: str = "file",
              content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """(body, Content-Type header) of a form with one file part."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


async def upload(port: int, token: str | None, data: bytes, filename: str = "file.bin",
                 *, tls: bool = False, **extra: Any) -> tuple[int, Any]:
    """POST a file; ``tls``: over HTTPS to a test certificate (HAProxy redirects plain HTTP)."""
    body, ctype = multipart(data, filename, **extra)
    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = await AsyncHTTPClient().fetch(HTTPRequest(
        f"{'https' if tls else 'http'}://127.0.0.1:{port}/api/v1/attachments", method="POST",
        headers=headers, body=body, request_timeout=30, validate_cert=False),
        raise_error=False)
    try:
        return resp.code, json.loads(resp.body or b"null")
    except ValueError:
        return resp.code, resp.body


async def fetch(port: int, path: str, token: str | None = None,
                headers: dict[str, str] | None = None, *, tls: bool = False
                ) -> tuple[int, dict[str, str], bytes]:
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    resp = await AsyncHTTPClient().fetch(HTTPRequest(
        f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}", headers=all_headers,
        request_timeout=30, validate_cert=False), raise_error=False)
    return resp.code, dict(resp.headers), resp.body or b""


async def raw_request(port: int, head: bytes, body: bytes = b"", *, read_timeout: float = 10
                      ) -> tuple[int, bytes]:
    """Send ``head`` (and ``body``), keep the connection open, and return the status and body
    of the answer (0 if the server closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = b""
        try:
            while b"\r\n\r\n" not in data or not _complete(data):
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ConnectionError):
            pass
        if not data.startswith(b"HTTP/"):
            return 0, data
        status = int(data.split(b" ", 2)[1])
        return status, data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    finally:
        writer.close()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in io.BytesIO(head).read().split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True

"""Blocking JSON over HTTP(S) for tests that talk to a deployed stack, and the TLS context
that accepts its self-signed test certificate."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


def insecure_tls() -> ssl.SSLContext:
    """TLS 1.3 only, self-signed certificate accepted (the stack's test secret)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_json(method: str, url: str, body: Any = None, token: str | None = None,
              timeout: float = 10.0, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """Blocking JSON request (run it in a thread from async code)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    empty = b"" if method in ("POST", "PUT") else None
    data = json.dumps(body).encode() if body is not None else empty
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")

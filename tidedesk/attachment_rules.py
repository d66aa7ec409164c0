"""Attachments: what a file is, whether a site takes it, its safe name, and its signed link
(pure; no I/O, the clock passed in).

- :func:`sniff` tells the type from the first bytes (magic numbers), never from the name or
  the browser's claim: a ``.exe`` renamed ``.png`` is still a Windows program.
- :class:`SiteLimits` is what one site allows (size, types); :func:`default_limits` builds the
  default site's from the settings. Sites (issue 16) fill their own.
- :func:`safe_name` keeps the last path segment of a client's file name, without control
  characters, with an extension that matches the type.
- :func:`sign_link` / :func:`check_link`: an HMAC-SHA256 in a query string, bound to one
  attachment and an expiry, for ``<img>`` and download links that cannot carry a bearer token.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass

# Enough bytes to tell every type below apart.
SNIFF_BYTES = 512
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Types a browser could run or render as a page in our origin: never served inline, and
# refused on upload unless a site explicitly allows them.
ACTIVE_TYPES = frozenset({"image/svg+xml", "text/html", "application/x-msdownload"})
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif",
              "image/webp": ".webp", "application/pdf": ".pdf", "text/plain": ".txt",
              "application/zip": ".zip", "image/svg+xml": ".svg", "text/html": ".html",
              "application/x-msdownload": ".exe", "application/octet-stream": ".bin"}
ALIASES = {".jpeg": "image/jpeg", ".htm": "text/html"}
MAX_NAME_CHARS = 120


def sniff(head: bytes) -> str:
    """The type of a file from its first bytes; ``application/octet-stream`` when unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "application/zip"
    if head[:2] == b"MZ" or head[:4] == b"\x7fELF":
        return "application/x-msdownload"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in head.lower():
        return "image/svg+xml"
    if text.startswith((b"<!doctype html", b"<html", b"<script", b"<head", b"<body",
                        b"<iframe")):
        return "text/html"
    if b"\x00" not in head and _is_utf8_prefix(head):
        return "text/plain"
    return "application/octet-stream"


def _is_utf8_prefix(data: bytes) -> bool:
    """UTF-8, allowing a multi-byte character cut at the end of the sniffed prefix."""
    for cut in range(4):
        try:
            (data[:-cut] if cut else data).decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


@dataclass(frozen=True)
class SiteLimits:
    """What one site accepts: the largest file in bytes and the types (as :func:`sniff`
    names them)."""

    max_bytes: int
    types: frozenset[str]

    def size_error(self, size: int) -> str | None:
        if size > self.max_bytes:
            return f"the file is larger than {human_size(self.max_bytes)}: send a smaller one"
        return None

    def type_error(self, content_type: str) -> str | None:
        if content_type in self.types:
            return None
        allowed = ", ".join(sorted(EXTENSIONS.get(t, t).lstrip(".") for t in self.types))
        return f"files of this type ({content_type}) are not accepted; send one of: {allowed}"


def default_limits(max_bytes: int, types: tuple[str, ...]) -> SiteLimits:
    return SiteLimits(max_bytes=max_bytes, types=frozenset(types))


def human_size(n: int) -> str:
    """10485760 → '10 MB' (binary multiples, as file managers show them)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def safe_name(raw: str | None, content_type: str) -> str:
    """The last segment of ``raw`` (``/`` and ``\\`` both split), without control or format
    characters or leading dots, at most :data:`MAX_NAME_CHARS`, ending in the type's own
    extension (``invoice.exe`` that is a PNG becomes ``invoice.exe.png``)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().lstrip(".")
    ext = EXTENSIONS.get(content_type, "")
    lower = name.lower()
    if ext and not (lower.endswith(ext) or ALIASES.get(lower[lower.rfind("."):]) == content_type):
        name = f"{name}{ext}" if name else f"file{ext}"
    if not name:
        name = "file"
    if len(name) > MAX_NAME_CHARS:
        stem, dot, tail = name.rpartition(".")
        keep = MAX_NAME_CHARS - len(tail) - 1
        name = f"{stem[:keep]}.{tail}" if dot and keep > 0 else name[:MAX_NAME_CHARS]
    return name


def inline(content_type: str) -> bool:
    """Only raster images are shown in the page; everything else is a download."""
    return content_type in IMAGE_TYPES


def sign_link(secret: bytes, attachment_id: str, expires: int) -> str:
    mac = hmac.new(secret, f"attachment:{attachment_id}:{expires}".encode(), hashlib.sha256)
    return mac.hexdigest()


def check_link(secret: bytes, attachment_id: str, expires: str | None, signature: str | None,
               now: float) -> bool:
    """True when ``signature`` is ours for this attachment and ``expires`` is still ahead."""
    if not expires or not signature or not expires.isdigit() or int(expires) < now:
        return False
    return hmac.compare_digest(sign_link(secret, attachment_id, int(expires)), signature)

"""Which web origins may talk to this chat node from a browser (WebSockets and CORS)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlparse


def origin_allowed(origin: str, allowed: Iterable[str], host: str) -> bool:
    """``origin`` (scheme://host[:port]) is in ``allowed``, ``allowed`` has ``*``, or it is
    this server's own host (the demo page, the console)."""
    allowed_set = {o.rstrip("/") for o in allowed}
    if "*" in allowed_set or origin.rstrip("/") in allowed_set:
        return True
    return urlparse(origin).netloc.lower() == host.lower()

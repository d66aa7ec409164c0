"""Which web origins may talk to this chat node from a browser (WebSockets and CORS), and which
``Host`` names it answers to (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def normalise_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``scheme://host[:port]``, lower-cased, the default port filled
    in; None for anything else (``null``, a path, no host)."""
    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path or parts.query or parts.username:
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def origin_allowed(origin: str, allowed: Iterable[str], host: str, scheme: str = "http") -> bool:
    """``origin`` is in ``allowed`` (compared by scheme, host and port: ``https://Shop.test``
    is ``https://shop.test:443``, and ``http://shop.test`` is not it), ``allowed`` has ``*``,
    or it is this server's own scheme and host (the demo page, the console)."""
    allowed = list(allowed)
    if "*" in allowed:
        return True
    mine = normalise_origin(origin)
    if mine is None:
        return False
    if any(normalise_origin(o) == mine for o in allowed):
        return True
    return mine == normalise_origin(f"{scheme}://{host}")


def host_allowed(host_name: str, public_hosts: Iterable[str]) -> bool:
    """The request's ``Host`` (without port) is one of the configured public names, or any
    name while none is configured (embedded, tests); loopback names always (health checks)."""
    names = {h.lower().rstrip(".") for h in public_hosts}
    host = host_name.lower().rstrip(".")
    return not names or host in names or host in LOOPBACK_NAMES

"""The browser protections every answer carries (pure): a strict Content-Security-Policy (no
inline script anywhere; pages load their scripts from /static), framing refused for the console,
supervisor and admin pages, Referrer-Policy, nosniff, and HSTS once the request came over TLS.
docs/security.md has the table."""

from __future__ import annotations

import functools
from collections.abc import Iterable

# Inline styles stay allowed: the widget puts its CSS in a <style> inside its shadow root (the
# risk CSP takes away is script; styles cannot run code in current browsers).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors {ancestors}")
HSTS = "max-age=63072000"


def security_headers(*, framable_by: Iterable[str] | None, tls: bool) -> dict[str, str]:
    """Headers for one answer. ``framable_by``: None for pages nobody may frame (console,
    supervisor, admin, the API); else the sites that may (the widget demo page: this server and
    TIDEDESK_ALLOWED_ORIGINS)."""
    return dict(header_items(None if framable_by is None else tuple(framable_by), tls))


@functools.lru_cache(maxsize=64)
def header_items(framable_by: tuple[str, ...] | None, tls: bool) -> tuple[tuple[str, str], ...]:
    """:func:`security_headers` as (name, value) pairs, worked out once per (sites, TLS): every
    answer and every WebSocket handshake sets them (issue 17, P1). The sites come from the
    settings, so a process has a handful of keys."""
    sites = list(framable_by) if framable_by is not None else []
    if framable_by is None:
        ancestors = "'none'"
    elif "*" in sites:
        ancestors = "*"
    else:
        ancestors = " ".join(["'self'", *sites])
    headers = {
        "Content-Security-Policy": _CSP.format(ancestors=ancestors),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if framable_by is None:
        headers["X-Frame-Options"] = "DENY"  # browsers that predate frame-ancestors
    if tls:
        headers["Strict-Transport-Security"] = HSTS
    return tuple(headers.items())

"""Chat links in mail (pure; no I/O): a one-time code, not a credential that lasts.

A reply mail's link opens the shop's page with ``#tidedesk-code=<code>``; the widget trades the
code for a visitor token (``POST /api/v1/visitors/mail-link``) and drops it from the address
bar. A code is 32 random bytes (URL-safe base64); only its SHA-256 is stored, with the visitor
and conversation it opens and its expiry. It works **once**, within :data:`LINK_CODE_TTL_SECS`
of the mail being built: a forwarded or leaked mail whose link was already followed opens
nothing, and an old one stops working. A visitor may still answer by e-mail after that (the
reply token lasts 60 days, ``tokens.py``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Literal

# Mail is read hours or days later (a weekend, a short holiday), so the first use may come up
# to a week after sending; after that the chat has moved on, and the widget opens a new one.
LINK_CODE_TTL_SECS = 7 * 86400
# Spent and expired codes are kept this long after their expiry, so a late click still hears
# "already used" or "expired" rather than "unknown"; then they are deleted.
LINK_CODE_KEEP_SECS = 30 * 86400
LINK_CODE_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")

Refusal = Literal["link_used", "link_expired", "link_unknown"]
# What a refused code's answer says (the widget shows its own words for each code, en + zh).
_FORWARD = ("start a new chat (POST /api/v1/visitors; the widget does this itself) or answer "
            "the e-mail")
LINK_REFUSALS: dict[Refusal, str] = {
    "link_used": f"this chat link was already used (a link works once): {_FORWARD}",
    "link_expired": f"this chat link has expired (links work within "
                    f"{LINK_CODE_TTL_SECS // 86400} days of the mail): {_FORWARD}",
    "link_unknown": f"this chat link is not valid (or no longer kept): {_FORWARD}",
}


def new_link_code() -> str:
    return secrets.token_urlsafe(32)


def link_code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def refusal(*, found: bool, used_at: float | None, expires_at: float, now: float) -> Refusal:
    """Why a code that did not open its chat was refused (the caller tried the one atomic
    "unused and not expired → used" first): spent beats expired, so a visitor who clicks twice
    hears that the link worked before."""
    if not found:
        return "link_unknown"
    if used_at is not None:
        return "link_used"
    return "link_expired" if expires_at <= now else "link_used"


def mail_link(base: str, code: str) -> str:
    """The link of a mail: ``base`` (the page with the widget) with the code in its fragment,
    which browsers never send to a server (nor in a Referer)."""
    return f"{base.split('#', 1)[0]}#tidedesk-code={code}"

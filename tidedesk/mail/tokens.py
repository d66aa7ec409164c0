"""Reply tokens: which conversation a visitor's e-mail reply belongs to (pure; no I/O).

A token is ``<conversation id>.<expiry, base 36 unix seconds>.<signature>``, the signature
being the first 64 bits of HMAC-SHA256 over the rest, in hex, under a key derived from the
cluster's secret. It is all lower case letters, digits and dots, so it survives being the
plus part of an address (``help+<token>@shop.example``) and a Message-ID, and a mail client
that lower-cases addresses. A forged, altered or expired token verifies to ``None``; the
caller logs and counts it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

# A reply is accepted this long after the mail that carried the token was sent: long enough
# for a customer who answers after a holiday, short enough that old mail stops landing.
REPLY_TOKEN_TTL_SECS = 60 * 86400
_SIG_HEX = 16  # 64 bits: forging one takes 2^63 tries, against a mailbox that reads slowly
TOKEN_RE = re.compile(r"([0-9a-f]{1,32})\.([0-9a-z]{1,8})\.([0-9a-f]{16})")
_KEY_LABEL = b"tidedesk mail reply token v1"


@dataclass(frozen=True)
class ReplyToken:
    conversation_id: str
    expires_at: int


def _key(secret: str) -> bytes:
    # A key of its own (not the JWT key itself), so a token of one kind never verifies as
    # the other.
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _b36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
        if value == 0:
            return out


def _signature(secret: str, payload: str) -> str:
    return hmac.new(_key(secret), payload.encode(), hashlib.sha256).hexdigest()[:_SIG_HEX]


def sign_reply_token(secret: str, conversation_id: str, now: float,
                     ttl_s: float = REPLY_TOKEN_TTL_SECS) -> str:
    if not re.fullmatch(r"[0-9a-f]{1,32}", conversation_id):
        raise ValueError("conversation ids are 1-32 hex digits")
    payload = f"{conversation_id}.{_b36(int(now + ttl_s))}"
    return f"{payload}.{_signature(secret, payload)}"


def verify_reply_token(secret: str, token: str, now: float) -> ReplyToken | None:
    """The token's conversation, or None when it is malformed, forged or expired."""
    match = TOKEN_RE.fullmatch(token.strip().lower())
    if match is None:
        return None
    conv, exp, sig = match.groups()
    if not hmac.compare_digest(_signature(secret, f"{conv}.{exp}"), sig):
        return None
    expires_at = int(exp, 36)
    if expires_at < now:
        return None
    return ReplyToken(conversation_id=conv, expires_at=expires_at)


def find_tokens(text: str) -> list[str]:
    """Every token-shaped string in ``text`` (a header's value), in order."""
    return [m.group(0) for m in TOKEN_RE.finditer(text.lower())]

"""Passwords (argon2), TOTP second factor (pyotp) and signed tokens (PyJWT, HS256).

Token kinds (claim ``typ``): ``access`` and ``refresh`` for agents, ``visitor`` for visitors.
Agent tokens carry a family id (``fam``): one sign-in is one family; every refresh rotates the
refresh token within it (``jti``), and the chat service keeps the family's current ``jti`` in the
store so a reused refresh token, or a signed-out family, is refused (docs/security.md).
Everything here is pure (no store, no clock but the one passed in).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import secrets
import time
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# Failed sign-ins for one account: the first SIGNIN_FREE_FAILURES cost nothing; after that each
# further attempt must wait twice as long as the one before (1 s, 2 s, 4 s ... at most
# SIGNIN_MAX_DELAY_SECS) after the last failure; lock_after failures lock the account for a while.
SIGNIN_FREE_FAILURES = 2
SIGNIN_MAX_DELAY_SECS = 60.0
TOTP_ISSUER = "Tidedesk"
# Two tabs of one console share a sign-in and may refresh at the same moment: the loser presents
# the token the winner just spent. Within this window that is not taken for theft (the loser is
# told to use the new tokens its sibling stored); later, a spent token revokes the sign-in.
REFRESH_GRACE_SECS = 20.0

ROLES = ("agent", "supervisor", "admin")
# What an integration's API token may be allowed to do (docs/protocol.md, "API tokens").
SCOPES = ("conversations:read", "messages:write", "contacts:read", "contacts:write", "admin")
# API tokens are opaque: this prefix, then 256 random bits (url-safe base64). Only the SHA-256
# of the whole token is stored; a salt or a slow hash buys nothing against 256 random bits.
API_TOKEN_PREFIX = "tdk_"
_hasher = PasswordHasher()
_ALGORITHM = "HS256"
# Tokens whose signature was checked, kept with their claims (issue 17, P1: PyJWT's decode was
# 9% of a connect's CPU, a reconnect presents the same token again). A signature that verified
# once always does and ``iat``/``nbf`` only get further behind, so a kept token is checked for
# expiry alone. Bounded, oldest out first (~1-2 MB at this size).
VERIFIED_TOKENS_KEPT = 4096


class AuthError(Exception):
    """Authentication failed; ``code`` is the machine code of the error body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def _unknown_account_hash() -> str:
    # The hash an unknown account's password is checked against: the same argon2 parameters
    # as real hashes, so the answer takes as long whether or not the account exists.
    return _hasher.hash(uuid.uuid4().hex)


def verify_password(password_hash: str | None, password: str) -> bool:
    """``password_hash`` None (no such account): the same work, then False."""
    try:
        return _hasher.verify(password_hash or _unknown_account_hash(), password) and (
            password_hash is not None)
    except (VerificationError, InvalidHashError):
        return False


def source_of(ip: str) -> str:
    """The throttling source of a client address: the address itself for IPv4, its /64 for
    IPv6 (one subscriber gets a whole /64, and could otherwise rotate through it)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip or "?"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def normalise_totp(code: str) -> str:
    """The code as ASCII digits: NFKC folds full-width and mathematical digits (``５``, ``𝟓``)
    into ``5``, then everything but 0-9 (spaces, dashes) goes. The check and the replay key both
    use this form: pyotp folds such digits itself, so a replay key made from the raw text could
    be dodged by sending the same code in another script."""
    return "".join(c for c in unicodedata.normalize("NFKC", code) if "0" <= c <= "9")


def verify_totp(secret: str, code: str, now: float | None = None) -> bool:
    # valid_window=1 accepts the previous and next 30 s step (clock drift of phones).
    code = normalise_totp(code)
    if len(code) != 6:
        return False
    try:
        return pyotp.TOTP(secret).verify(code, for_time=now, valid_window=1)
    except (ValueError, TypeError):  # a seed that is not base32 (say, one we cannot decrypt)
        return False


def signin_wait(failures: int, last_failure: float, now: float, *, lock_after: int,
                lock_s: float) -> float:
    """Seconds before the next sign-in attempt may be tried (0 = now), after ``failures``
    failed attempts, the last at ``last_failure``. Growing delays, then a lock of ``lock_s``."""
    if failures >= lock_after:
        return max(0.0, last_failure + lock_s - now)
    if failures <= SIGNIN_FREE_FAILURES:
        return 0.0
    delay = min(SIGNIN_MAX_DELAY_SECS, 2.0 ** (failures - SIGNIN_FREE_FAILURES - 1))
    return max(0.0, last_failure + delay - now)


def totp_uri(secret: str, email: str) -> str:
    """The ``otpauth://`` URI authenticator apps read (from the QR code or typed in)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def qr_svg_data_uri(text: str) -> str:
    """A QR code of ``text`` as an SVG ``data:`` URI, ready for an ``<img src>``."""
    import segno

    svg = segno.make(text, error="m").svg_inline(scale=4)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


@dataclass(frozen=True)
class RefreshFamily:
    """What the store keeps per sign-in: the live refresh token id, the one it replaced and
    when (for :data:`REFRESH_GRACE_SECS`). ``current`` empty: the store had lost the family
    (it restarted) and took it back from a token it had not seen revoked; the next refresh
    token presented becomes the live one."""

    current: str
    previous: str = ""
    rotated_at: float = 0.0

    def encode(self) -> str:
        return f"{self.current}|{self.previous}|{self.rotated_at!r}"

    @classmethod
    def decode(cls, raw: str | None) -> RefreshFamily | None:
        if raw is None:
            return None
        current, _, rest = raw.partition("|")
        previous, _, at = rest.partition("|")
        return cls(current, previous, float(at or 0))


def refresh_verdict(family: RefreshFamily | None, jti: str, now: float) -> str:
    """``rotate`` (the live token), ``revoked`` (the sign-in ended), ``sibling`` (the token
    just replaced, within the grace window) or ``reused`` (a spent token: revoke)."""
    if family is None:
        return "revoked"
    if not family.current or (jti and jti == family.current):
        return "rotate"  # the live token; or the store lost the family and took it back
    if jti and jti == family.previous and now - family.rotated_at <= REFRESH_GRACE_SECS:
        return "sibling"
    return "reused"


def new_token_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Principal:
    kind: str  # agent | visitor | api
    id: str
    role: str = "visitor"
    family: str = ""  # agent tokens: the sign-in they belong to
    jti: str = ""  # refresh tokens: this token's id within the family
    issued_at: int = 0  # the token's iat (whole seconds)
    scopes: tuple[str, ...] = ()  # API tokens: what they may do (SCOPES)
    name: str = ""  # API tokens: the name they were given (the actor in the audit log)

    @property
    def is_supervisor(self) -> bool:
        return self.role in ("supervisor", "admin")

    @property
    def actor(self) -> str:
        """Who the audit log names: ``agent:<id>``, ``visitor:<id>`` or ``token:<name>``."""
        if self.kind == "api":
            return f"token:{self.name}"
        return f"{self.kind}:{self.id}"


def new_api_token() -> str:
    """A fresh API token (shown once to its creator; only :func:`api_token_hash` is kept)."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def api_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_api_token(token: str | None) -> bool:
    return bool(token) and str(token).startswith(API_TOKEN_PREFIX)


class TokenService:
    def __init__(self, secret: str, access_ttl_s: int, refresh_ttl_s: int,
                 visitor_ttl_s: int = 30 * 86400) -> None:
        self._secret = secret
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.visitor_ttl_s = visitor_ttl_s

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def agent_tokens(self, agent_id: str, role: str, *, family: str, jti: str,
                     now: float | None = None) -> dict[str, Any]:
        """An access token and the refresh token ``jti`` of sign-in ``family``."""
        now = time.time() if now is None else now
        base = {"sub": agent_id, "role": role, "iat": int(now), "fam": family}
        return {
            "access_token": self._encode({**base, "typ": "access",
                                          "exp": int(now + self.access_ttl_s)}),
            "refresh_token": self._encode({**base, "typ": "refresh", "jti": jti,
                                           "exp": int(now + self.refresh_ttl_s)}),
            "expires_in": self.access_ttl_s,
        }

    def visitor_token(self, visitor_id: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return self._encode({"sub": visitor_id, "typ": "visitor", "iat": int(now),
                             "exp": int(now + self.visitor_ttl_s)})

    def _claims(self, token: str) -> dict[str, Any]:
        """The claims of a token with a valid signature that has not expired (PyJWT's checks,
        once per token while it is among the :data:`VERIFIED_TOKENS_KEPT` last verified)."""
        claims = self._verified.get(token)
        if claims is not None:
            if int(claims["exp"]) > time.time():  # PyJWT: expired when exp <= now
                return claims
            del self._verified[token]
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALGORITHM],
                                options={"require": ["sub", "typ", "exp"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired; sign in or refresh "
                            "again") from None
        except jwt.PyJWTError:
            raise AuthError("invalid_token", "the token is not valid; sign in again") from None
        self._verified[token] = claims
        if len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)
        return claims

    def decode(self, token: str | None, expected: str) -> Principal:
        """The principal of a valid token of kind ``expected``; :class:`AuthError` otherwise."""
        if not token:
            raise AuthError("not_authenticated", "a token is required: pass ?token=... or an "
                            "'Authorization: Bearer <token>' header")
        claims = self._claims(token)
        if claims.get("typ") != expected:
            raise AuthError("invalid_token", f"this endpoint needs a {expected} token, "
                            f"got a {claims.get('typ')} token")
        if expected == "visitor":
            return Principal("visitor", str(claims["sub"]))
        if not claims.get("fam") or (expected == "refresh" and not claims.get("jti")):
            raise AuthError("invalid_token", "this token is from an older version; sign in again")
        role = str(claims.get("role", "agent"))
        if role not in ROLES:
            raise AuthError("invalid_token", "the token names no known role; sign in again")
        return Principal("agent", str(claims["sub"]), role, str(claims.get("fam", "")),
                         str(claims.get("jti", "")), int(claims.get("iat", 0)))

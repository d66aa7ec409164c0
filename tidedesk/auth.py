"""Passwords (argon2), TOTP second factor (pyotp) and signed tokens (PyJWT, HS256).

Token kinds (claim ``typ``): ``access`` and ``refresh`` for agents, ``visitor`` for visitors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("agent", "supervisor", "admin")
_hasher = PasswordHasher()
_ALGORITHM = "HS256"


class AuthError(Exception):
    """Authentication failed; ``code`` is the machine code of the error body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_totp_secret() -> str:
    return pyotp.random_base32()


def verify_totp(secret: str, code: str, now: float | None = None) -> bool:
    # valid_window=1 accepts the previous and next 30 s step (clock drift of phones).
    return pyotp.TOTP(secret).verify(code.strip(), for_time=now, valid_window=1)


@dataclass(frozen=True)
class Principal:
    kind: str  # agent | visitor
    id: str
    role: str = "visitor"

    @property
    def is_supervisor(self) -> bool:
        return self.role in ("supervisor", "admin")


class TokenService:
    def __init__(self, secret: str, access_ttl_s: int, refresh_ttl_s: int) -> None:
        self._secret = secret
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def agent_tokens(self, agent_id: str, role: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        base = {"sub": agent_id, "role": role, "iat": int(now)}
        return {
            "access_token": self._encode({**base, "typ": "access",
                                          "exp": int(now + self.access_ttl_s)}),
            "refresh_token": self._encode({**base, "typ": "refresh",
                                           "exp": int(now + self.refresh_ttl_s)}),
            "expires_in": self.access_ttl_s,
        }

    def visitor_token(self, visitor_id: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return self._encode({"sub": visitor_id, "typ": "visitor", "iat": int(now)})

    def decode(self, token: str | None, expected: str) -> Principal:
        """The principal of a valid token of kind ``expected``; :class:`AuthError` otherwise."""
        if not token:
            raise AuthError("not_authenticated", "a token is required: pass ?token=... or an "
                            "'Authorization: Bearer <token>' header")
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALGORITHM],
                                options={"require": ["sub", "typ"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired; sign in or refresh "
                            "again") from None
        except jwt.PyJWTError:
            raise AuthError("invalid_token", "the token is not valid; sign in again") from None
        if claims.get("typ") != expected:
            raise AuthError("invalid_token", f"this endpoint needs a {expected} token, "
                            f"got a {claims.get('typ')} token")
        if expected == "visitor":
            return Principal("visitor", str(claims["sub"]))
        return Principal("agent", str(claims["sub"]), str(claims.get("role", "agent")))

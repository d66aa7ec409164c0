"""Encryption at rest of sensitive visitor fields: AES-256-GCM with a random 96-bit nonce.

Stored form: ``v1:`` + urlsafe base64 of nonce || ciphertext+tag. The key comes from settings
(``TIDEDESK_AES_KEY``, in a cluster a Docker/Nomad secret).
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1:"


class FieldCipher:
    def __init__(self, key_b64: str) -> None:
        self._aead = AESGCM(base64.b64decode(key_b64))

    def encrypt(self, plaintext: str, context: str = "") -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode() or None)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, stored: str, context: str = "") -> str | None:
        """The plaintext, or None if the value was not made with this key (never raises)."""
        if not stored.startswith(_PREFIX):
            return None
        try:
            raw = base64.urlsafe_b64decode(stored[len(_PREFIX):])
            return self._aead.decrypt(raw[:12], raw[12:], context.encode() or None).decode()
        except (InvalidTag, ValueError):
            return None

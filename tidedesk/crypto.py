"""Encryption at rest of sensitive fields: AES-256-GCM with a random 96-bit nonce.

Stored form: ``v2:<key id>:`` + urlsafe base64 of nonce || ciphertext+tag. The key id (the first
8 hex digits of SHA-256 of the key) sits beside every value, so after a key change the old key
(``TIDEDESK_AES_PREVIOUS_KEYS``) still reads what it wrote until ``tidedesk admin rotate-key``
has re-encrypted it, and :meth:`FieldCipher.needs_rotation` tells which values are left. The
``context`` (e.g. ``visitor.email``) is bound as associated data: a value copied into another
column does not decrypt. Values of the first format (``v1:``, no key id) are still read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_V1 = "v1:"
_V2 = "v2:"
_NONCE_BYTES = 12
# v2:<8 hex>:<base64 of nonce + at least the 16-byte tag>, or v1:<the same base64>.
_SEALED = re.compile(r"(v2:[0-9a-f]{8}:|v1:)[A-Za-z0-9_-]{38,}={0,2}")


def key_id(key_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(key_b64)).hexdigest()[:8]


class FieldCipher:
    """Encrypts with the current key; decrypts with it or any of ``previous`` keys."""

    def __init__(self, key_b64: str, previous: Iterable[str] = ()) -> None:
        self.key_id = key_id(key_b64)
        # issue 14: the key of blinded search tokens (a contact's name and e-mail are found
        # without storing them in the clear); derived, so it never equals the AEAD key.
        self._blind_key = hmac.new(base64.b64decode(key_b64), b"tidedesk-blind-index",
                                   hashlib.sha256).digest()
        self._keys: dict[str, AESGCM] = {self.key_id: AESGCM(base64.b64decode(key_b64))}
        for old in previous:
            self._keys.setdefault(key_id(old), AESGCM(base64.b64decode(old)))

    def encrypt(self, plaintext: str, context: str = "") -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self.key_id].encrypt(nonce, plaintext.encode(),
                                                 context.encode() or None)
        return f"{_V2}{self.key_id}:" + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, stored: str, context: str = "") -> str | None:
        """The plaintext, or None if no key we hold made the value (never raises)."""
        if stored.startswith(_V2):
            kid, _, payload = stored[len(_V2):].partition(":")
            aead = self._keys.get(kid)
            return None if aead is None else _open(aead, payload, context)
        if stored.startswith(_V1):
            for aead in self._keys.values():
                plain = _open(aead, stored[len(_V1):], context)
                if plain is not None:
                    return plain
        return None

    def aead(self, kid: str | None = None) -> AESGCM | None:
        """The AES-GCM of key ``kid`` (the current key without one), for callers that seal
        bytes in their own framing (attachments: ``tidedesk.blobs.sealed``); None if unknown."""
        return self._keys.get(self.key_id if kid is None else kid)

    def blind(self, token: str) -> str:
        """A short keyed digest of a search token: equal tokens give equal digests, and the
        digest tells nothing about the token without the key. Changes with the key."""
        return hmac.new(self._blind_key, token.encode(), hashlib.sha256).hexdigest()[:20]

    @staticmethod
    def looks_sealed(stored: str) -> bool:
        """Whether ``stored`` has the shape of a value this module made (with any key): a
        message a visitor typed may start with ``v2:`` but not look like this."""
        return bool(_SEALED.fullmatch(stored))

    def needs_rotation(self, stored: str) -> bool:
        """True unless ``stored`` was made with the current key."""
        return not stored.startswith(f"{_V2}{self.key_id}:")


def _open(aead: AESGCM, payload: str, context: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(payload)
        return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                            context.encode() or None).decode()
    except (InvalidTag, ValueError):
        return None

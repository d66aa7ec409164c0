"""Encryption at rest for any blob backend: AES-256-GCM in independent chunks, so a file is
encrypted while it streams in and a range request decrypts only the chunks it touches.

Stored form: ``TDB1`` + the key id (8 ASCII hex digits, ``tidedesk.crypto.key_id``) + an
8-byte random nonce prefix, then chunks of :data:`CHUNK` plaintext bytes, each sealed with the
nonce ``prefix || index`` (4 bytes) and the associated data ``key || index || final``. The last
chunk (possibly empty) carries ``final = 1``: cutting the object at a chunk boundary, swapping
chunks, or copying an object under another key makes decryption fail instead of returning
altered bytes. The key id beside the data lets an old key (``TIDEDESK_AES_PREVIOUS_KEYS``)
still read what it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidedesk.blobs import BlobStore, BlobWriter, check_key
from tidedesk.crypto import FieldCipher

MAGIC = b"TDB1"
CHUNK = 64 * 1024
TAG = 16
HEADER = len(MAGIC) + 8 + 8
SEALED_CHUNK = CHUNK + TAG


class BlobCorrupt(ValueError):
    """The stored bytes do not decrypt: altered, truncated, or sealed with a key we lack."""


def _aad(key: str, index: int, final: bool) -> bytes:
    return key.encode() + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


class _SealedWriter(BlobWriter):
    def __init__(self, inner: BlobWriter, cipher: FieldCipher, key: str) -> None:
        aead = cipher.aead()
        assert aead is not None
        self._aead = aead
        self._inner = inner
        self._key = key
        self._prefix = os.urandom(8)
        self._index = 0
        self._pending = bytearray()
        inner.write(MAGIC + cipher.key_id.encode() + self._prefix)

    def _seal(self, plain: bytes, final: bool) -> None:
        nonce = self._prefix + self._index.to_bytes(4, "big")
        self._inner.write(self._aead.encrypt(nonce, plain, _aad(self._key, self._index, final)))
        self._index += 1

    def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) > CHUNK:  # keep at least one byte back for the final chunk
            self._seal(bytes(self._pending[:CHUNK]), False)
            del self._pending[:CHUNK]

    def commit(self) -> None:
        self._seal(bytes(self._pending), True)
        self._pending.clear()
        self._inner.commit()

    def abort(self) -> None:
        self._pending.clear()
        self._inner.abort()


class SealedBlobs(BlobStore):
    def __init__(self, inner: BlobStore, cipher: FieldCipher) -> None:
        self.inner = inner
        self.cipher = cipher

    def writer(self, key: str) -> BlobWriter:
        return _SealedWriter(self.inner.writer(check_key(key)), self.cipher, key)

    @staticmethod
    def _chunks(stored: int) -> int:
        if stored < HEADER + TAG:
            raise BlobCorrupt("shorter than an empty sealed blob")
        return -(-(stored - HEADER) // SEALED_CHUNK)

    def size(self, key: str) -> int:
        stored = self.inner.size(key)
        return stored - HEADER - TAG * self._chunks(stored)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        stored = self.inner.size(key)
        chunks = self._chunks(stored)
        plain_size = stored - HEADER - TAG * chunks
        end = plain_size if length is None else min(plain_size, offset + length)
        if offset >= end:
            return iter(())
        header = b"".join(self.inner.read(key, 0, HEADER))
        return self._plain(key, header, offset, end, chunks)

    def _plain(self, key: str, header: bytes, offset: int, end: int,
               chunks: int) -> Iterator[bytes]:
        if header[:4] != MAGIC:
            raise BlobCorrupt(f"{key}: not a sealed blob")
        aead = self.cipher.aead(header[4:12].decode("ascii", "replace"))
        if aead is None:
            raise BlobCorrupt(f"{key}: sealed with a key this node does not hold")
        prefix = header[12:20]
        first, last = offset // CHUNK, (end - 1) // CHUNK
        start = HEADER + first * SEALED_CHUNK
        raw = self.inner.read(key, start, (last - first + 1) * SEALED_CHUNK)
        buf = bytearray()
        index = first
        for piece in raw:
            buf += piece
            while len(buf) >= SEALED_CHUNK:
                yield from self._open(aead, prefix, key, index, bytes(buf[:SEALED_CHUNK]),
                                      chunks, offset, end)
                del buf[:SEALED_CHUNK]
                index += 1
        if index <= last:  # the final, shorter chunk
            yield from self._open(aead, prefix, key, index, bytes(buf), chunks, offset, end)

    @staticmethod
    def _open(aead: AESGCM, prefix: bytes, key: str, index: int, sealed: bytes, chunks: int,
              offset: int, end: int) -> Iterator[bytes]:
        try:
            plain = aead.decrypt(prefix + index.to_bytes(4, "big"), sealed,
                                 _aad(key, index, index == chunks - 1))
        except InvalidTag:
            raise BlobCorrupt(f"{key}: chunk {index} does not decrypt") from None
        lo = max(offset - index * CHUNK, 0)
        hi = min(end - index * CHUNK, len(plain))
        if lo < hi:
            yield plain[lo:hi]

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()

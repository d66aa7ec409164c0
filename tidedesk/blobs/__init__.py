"""The attachment-bytes seam: where uploaded files live, behind one small interface.

Contract (``tests/test_blobs_contract.py`` runs it on every backend, plain and sealed):

- :meth:`BlobStore.writer` returns a :class:`BlobWriter`; bytes written to it are invisible
  under ``key`` until :meth:`BlobWriter.commit`. :meth:`BlobWriter.abort` (or a failure before
  commit) leaves nothing behind: no half-written file is ever readable.
- :meth:`BlobStore.read` yields the bytes of ``[offset, offset + length)`` in chunks (the whole
  object without ``length``); :class:`BlobNotFound` for a key that is not there.
- :meth:`BlobStore.delete` removes a key (absent keys are fine: deleting twice is not an error).
- :meth:`BlobStore.size` is the stored size in bytes.

Every call blocks (disk or network): the chat node runs them in its blob thread pool. Keys are
``[0-9a-z._-]`` only, made by the server, never from a client's name.

Backends: :class:`~tidedesk.blobs.local.LocalBlobs` (a directory: embedded mode, or a volume),
:class:`~tidedesk.blobs.s3.S3Blobs` (any S3-compatible server through boto3: MinIO, Ceph RGW,
AWS). :class:`~tidedesk.blobs.sealed.SealedBlobs` wraps either and encrypts at rest
(AES-256-GCM in chunks, ``TIDEDESK_ENCRYPT_MESSAGE_BODIES``). :func:`open_blobs` builds the one
the settings name.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from typing import Any

KEY_RE = re.compile(r"^[0-9a-z][0-9a-z._-]{0,127}$")


class BlobNotFound(KeyError):
    """No object under that key."""


class BlobWriter(abc.ABC):
    """One object being written: ``write`` chunks, then ``commit`` (or ``abort``)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the object readable under its key (atomically: all of it or nothing)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what was written; safe to call after a failed write, and more than once."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, typ: object, exc: object, tb: object) -> None:
        if typ is not None:
            self.abort()


class BlobStore(abc.ABC):
    @abc.abstractmethod
    def writer(self, key: str) -> BlobWriter: ...

    @abc.abstractmethod
    def read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]: ...

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def read_all(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def put(self, key: str, data: bytes) -> None:
        with self.writer(key) as w:
            w.write(data)
            w.commit()

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise ValueError(f"blob key {key!r}: use 1-128 of 0-9 a-z . _ -")
    return key


def open_blobs(url: str | None, *, data_dir: str, database: object, cipher: object = None
               ) -> BlobStore:
    """The backend ``TIDEDESK_ATTACHMENTS_URL`` names (``database`` is the storage's
    :class:`~tidedesk.storage.database.Database`), sealed with ``cipher`` when one is given
    (``TIDEDESK_ENCRYPT_MESSAGE_BODIES``)."""
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    from tidedesk.crypto import FieldCipher

    store: BlobStore
    if url is None or url.startswith("file://"):
        from tidedesk.blobs.local import LocalBlobs

        root = Path(data_dir) / "attachments" if url is None else Path(unquote(urlsplit(url).path))
        store = LocalBlobs(root)
    elif url.startswith("s3://"):
        from tidedesk.blobs.s3 import S3Blobs

        store = S3Blobs(url)
    elif url == "database":
        from tidedesk.blobs.database import DatabaseBlobs
        from tidedesk.storage.database import Database

        assert isinstance(database, Database)
        store = DatabaseBlobs(database)
    else:
        raise ValueError(f"TIDEDESK_ATTACHMENTS_URL: unknown backend {url!r}")
    if cipher is not None:
        from tidedesk.blobs.sealed import SealedBlobs

        assert isinstance(cipher, FieldCipher)
        store = SealedBlobs(store, cipher)
    return store


# An image's thumbnail is kept beside it under this suffix of its key.
THUMB_SUFFIX = ".thumb"


async def delete_conversation_files(storage: Any, blobs: BlobStore, conversation_id: str) -> int:
    """Delete every file sent in a conversation, rows then bytes (the retention job; the chat
    node's erasure goes through ``chatnode.attachments``); returns how many."""
    import asyncio

    ids = await storage.attachments.take_for(conversation_id=conversation_id)
    for att_id in ids:
        await asyncio.to_thread(blobs.delete, att_id)
        await asyncio.to_thread(blobs.delete, att_id + THUMB_SUFFIX)
    return len(ids)

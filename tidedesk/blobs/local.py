"""Blobs in a local directory: embedded mode, or a volume shared by the chat nodes.

A write goes to ``<dir>/.partial/<random>`` and is renamed into place on commit (``rename`` is
atomic on one file system), so a reader never sees half a file and a crash leaves only a
partial file, which :meth:`LocalBlobs.sweep_partials` removes."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tidedesk.blobs import BlobNotFound, BlobStore, BlobWriter, check_key

READ_CHUNK = 64 * 1024
# A partial file older than this belongs to no upload still running (uploads time out sooner).
PARTIAL_MAX_AGE_SECS = 3600


class _LocalWriter(BlobWriter):
    def __init__(self, final: Path, partial: Path) -> None:
        self._final = final
        self._partial = partial
        # Private from creation (issue 18): the mode is given when the file is made.
        self._file = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                               "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(self._partial, self._final)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalBlobs(BlobStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._partials = self.root / ".partial"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._partials.mkdir(exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key  # a fan-out level keeps directories small

    def writer(self, key: str) -> BlobWriter:
        return _LocalWriter(self._path(key), self._partials / secrets.token_hex(16))

    def read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        return self._chunks(f, offset, length)

    @staticmethod
    def _chunks(f: BinaryIO, offset: int, length: int | None) -> Iterator[bytes]:
        with f:
            f.seek(offset)
            left = length
            while left is None or left > 0:
                data = f.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
                if not data:
                    return
                if left is not None:
                    left -= len(data)
                yield data

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sweep_partials(self, now: float | None = None) -> int:
        """Remove partial files a crashed process left (older than an upload can take)."""
        now = time.time() if now is None else now
        removed = 0
        for path in self._partials.iterdir():
            if now - path.stat().st_mtime > PARTIAL_MAX_AGE_SECS:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

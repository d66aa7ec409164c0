"""Blobs in the history databases (MariaDB or SQLite), sharded like history: the Swarm
stack's default, because every chat node already reaches MariaDB and a named volume is local to
one Swarm host (a file uploaded through one node must be downloadable through any other).

An object is rows of :data:`PART` bytes (below MariaDB's 64 KiB ``BLOB``) in ``blob_part`` on
the shard of its key (``tidedesk.models.shard_index``). A writer inserts its parts marked with
its own random ``pending`` token; commit clears the mark in one ``UPDATE``, so readers (who see
only unmarked rows) get all of the object or none; abort deletes the marked rows."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import peewee as pw

from tidedesk.blobs import BlobNotFound, BlobStore, BlobWriter, check_key
from tidedesk.models import Shard
from tidedesk.storage.database import Database

PART = 60 * 1024


class _DatabaseWriter(BlobWriter):
    def __init__(self, blobs: DatabaseBlobs, key: str) -> None:
        self._blobs = blobs
        self._key = key
        self._token = secrets.token_hex(8)
        self._part = 0
        self._pending = bytearray()
        self._shard = blobs.shard(key)

    def _flush(self, data: bytes) -> None:
        model = self._shard["BlobPart"]
        with self._shard.db.connection_context():
            model.insert(key=self._key, part=self._part, data=data,
                         pending=self._token).execute()
        self._part += 1

    def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= PART:
            self._flush(bytes(self._pending[:PART]))
            del self._pending[:PART]

    def commit(self) -> None:
        if self._pending or self._part == 0:
            self._flush(bytes(self._pending))  # an empty object is one empty part
        self._pending.clear()
        model = self._shard["BlobPart"]
        with self._shard.db.connection_context():
            model.update(pending="").where((model.key == self._key)
                                           & (model.pending == self._token)).execute()

    def abort(self) -> None:
        self._pending.clear()
        model = self._shard["BlobPart"]
        with self._shard.db.connection_context():
            model.delete().where((model.key == self._key)
                                 & (model.pending == self._token)).execute()


class DatabaseBlobs(BlobStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    def shard(self, key: str) -> Shard:
        return self._db.shard_for(key)

    def writer(self, key: str) -> BlobWriter:
        return _DatabaseWriter(self, check_key(key))

    def _committed(self, key: str) -> tuple[Shard, Any]:
        shard = self.shard(check_key(key))
        model = shard["BlobPart"]
        return shard, model.select().where((model.key == key) & (model.pending == ""))

    def size(self, key: str) -> int:
        shard, query = self._committed(key)
        model = shard["BlobPart"]
        with shard.db.connection_context():
            row = query.select(pw.fn.COUNT(model.part), pw.fn.SUM(pw.fn.LENGTH(model.data))
                               ).tuples().first()
        if not row or not row[0]:
            raise BlobNotFound(key)
        return int(row[1] or 0)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        size = self.size(key)
        end = size if length is None else min(size, offset + length)
        return self._parts(key, offset, end)

    def _parts(self, key: str, offset: int, end: int) -> Iterator[bytes]:
        shard, query = self._committed(key)
        model = shard["BlobPart"]
        part = offset // PART
        while offset < end:
            with shard.db.connection_context():
                row = query.where(model.part == part).first()
            if row is None:
                raise BlobNotFound(key)
            data = bytes(row.data)
            lo, hi = offset - part * PART, min(end - part * PART, len(data))
            if lo >= hi:
                return
            yield data[lo:hi]
            offset = part * PART + hi
            part += 1

    def delete(self, key: str) -> None:
        shard = self.shard(check_key(key))
        model = shard["BlobPart"]
        with shard.db.connection_context():
            model.delete().where(model.key == key).execute()

"""One contract for the attachment-bytes seam (tidedesk/blobs), run on every backend: a local
directory, S3 (moto's S3 server as a subprocess), the history database (SQLite and MariaDB),
each plain and sealed (AES-256-GCM at rest)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mariadb import databases
from tests.support.s3 import moto_s3, s3_url
from tidedesk.blobs import BlobNotFound, BlobStore, open_blobs
from tidedesk.blobs.database import PART
from tidedesk.blobs.s3 import S3Blobs
from tidedesk.blobs.sealed import CHUNK, BlobCorrupt, SealedBlobs
from tidedesk.crypto import FieldCipher
from tidedesk.storage import Storage

KEY = base64.b64encode(b"k" * 32).decode()
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, PART + 7, 3 * CHUNK + 5]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


def _backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BlobStore]:
    if kind == "local":
        yield open_blobs(f"file://{tmp_path}/blobs", data_dir=str(tmp_path), database=None)
    elif kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        store = S3Blobs(s3_url(endpoint, f"b-{uuid.uuid4().hex[:12]}", "pre/fix"))
        store.ensure_bucket()
        yield store
        store.close()
    elif kind == "sqlite":
        storage = Storage([f"sqlite:///{tmp_path}/t.sqlite3"])
        storage.migrate_all()
        yield open_blobs("database", data_dir=str(tmp_path), database=storage.database)
        storage.close()
    else:
        with databases(2) as urls:
            storage = Storage(urls)
            storage.migrate_all()
            yield open_blobs("database", data_dir=str(tmp_path), database=storage.database)
            storage.close()


@pytest.fixture(params=[
    "local", "s3", "sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    yield from _backend(request.param, tmp_path, request)


@pytest.fixture(params=["plain", "sealed"])
def blobs(request: pytest.FixtureRequest, raw: BlobStore) -> BlobStore:
    return raw if request.param == "plain" else SealedBlobs(raw, FieldCipher(KEY))


def test_round_trip_sizes_and_ranges(blobs: BlobStore) -> None:
    for size in SIZES:
        data = os.urandom(size)
        key = f"a{size}"
        with blobs.writer(key) as w:
            for i in range(0, size, 10_000):  # uneven writes
                w.write(data[i:i + 10_000])
            w.commit()
        assert blobs.size(key) == size
        assert blobs.read_all(key) == data
        for offset, length in ((0, 1), (size // 2, 10), (max(size - 3, 0), 100),
                               (CHUNK - 2, 5), (size, 10)):
            assert b"".join(blobs.read(key, offset, length)) == data[offset:offset + length]
        assert b"".join(blobs.read(key, size // 3)) == data[size // 3:]


def test_nothing_visible_before_commit_and_nothing_left_after_abort(blobs: BlobStore) -> None:
    w = blobs.writer("half")
    w.write(b"x" * (CHUNK + 10))
    with pytest.raises(BlobNotFound):
        blobs.size("half")
    w.abort()
    w.abort()  # twice is fine
    with pytest.raises(BlobNotFound):
        blobs.read_all("half")
    with pytest.raises(RuntimeError), blobs.writer("boom") as w2:
        w2.write(b"partial")
        raise RuntimeError("the upload failed")
    with pytest.raises(BlobNotFound):
        blobs.size("boom")


def test_delete_and_missing_keys(blobs: BlobStore) -> None:
    blobs.put("gone", b"bytes")
    blobs.delete("gone")
    blobs.delete("gone")
    with pytest.raises(BlobNotFound):
        blobs.size("gone")
    with pytest.raises(BlobNotFound):
        blobs.read_all("never")
    with pytest.raises(ValueError):
        blobs.put("../etc/passwd", b"")


def test_sealed_bytes_are_unreadable_at_rest_and_tampering_is_caught(raw: BlobStore) -> None:
    sealed = SealedBlobs(raw, FieldCipher(KEY))
    secret = b"the customer's invoice " * 5000
    sealed.put("inv", secret)
    stored = raw.read_all("inv")
    assert b"invoice" not in stored
    raw.put("cut", stored[:-(len(stored) % (CHUNK + 16)) or None][: len(stored) - 5])
    with pytest.raises(BlobCorrupt):
        SealedBlobs(raw, FieldCipher(KEY)).read_all("cut")
    raw.put("moved", stored)  # the same bytes under another key do not decrypt
    with pytest.raises(BlobCorrupt):
        sealed.read_all("moved")
    other = SealedBlobs(raw, FieldCipher(base64.b64encode(b"o" * 32).decode()))
    with pytest.raises(BlobCorrupt):
        other.read_all("inv")
    rotated = SealedBlobs(raw, FieldCipher(base64.b64encode(b"n" * 32).decode(), [KEY]))
    assert rotated.read_all("inv") == secret


def test_local_abort_leaves_no_partial_file(tmp_path: Path) -> None:
    blobs = open_blobs(None, data_dir=str(tmp_path), database=None)
    w = blobs.writer("p1")
    w.write(b"abc")
    w.abort()
    assert [p for p in (tmp_path / "attachments").rglob("*") if p.is_file()] == []

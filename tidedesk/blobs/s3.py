"""Blobs in S3-compatible object storage (MinIO, Ceph RGW, AWS) through boto3.

A write spools to a local temporary file (kept on disk past :data:`SPOOL_MEMORY_BYTES`) and is
sent with one ``PutObject`` on commit: S3 makes an object visible only when its PUT completes,
so nothing half-written is ever readable, and no upload holds its file in memory (a multipart
upload would hold a 5 MiB part per upload in flight). One PUT takes objects up to 5 GB, far
above any attachment limit.

Tested against moto's S3 server (``moto[server]``, a subprocess on a loopback port): no real
S3 server can be installed on the test machines.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tidedesk.blobs import BlobNotFound, BlobStore, BlobWriter, check_key

SPOOL_MEMORY_BYTES = 256 * 1024
READ_CHUNK = 64 * 1024


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


class _S3Writer(BlobWriter):
    def __init__(self, blobs: S3Blobs, key: str) -> None:
        self._blobs = blobs
        self._key = key
        self._spool: Any = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)

    def write(self, data: bytes) -> None:
        self._spool.write(data)

    def commit(self) -> None:
        size = self._spool.tell()
        self._spool.seek(0)
        try:
            self._blobs.client.put_object(Bucket=self._blobs.bucket,
                                          Key=self._blobs.prefix + self._key,
                                          Body=self._spool, ContentLength=size)
        finally:
            self._spool.close()

    def abort(self) -> None:
        self._spool.close()


class S3Blobs(BlobStore):
    """``url``: ``s3://ACCESS:SECRET@host:port/bucket/prefix?secure=false&region=us-east-1``
    (``secure`` defaults to true: https). The bucket must exist; :meth:`ensure_bucket` makes
    it (tests, first start)."""

    def __init__(self, url: str) -> None:
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname:
            raise ValueError(f"not an s3:// URL with a host: {url!r}")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        secure = options.get("secure", "true").lower() not in ("0", "false", "no")
        path = parts.path.lstrip("/")
        self.bucket, _, prefix = path.partition("/")
        if not self.bucket:
            raise ValueError(f"the s3:// URL names no bucket: {url!r}")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        port = f":{parts.port}" if parts.port else ""
        self.client = boto3.client(
            "s3", endpoint_url=f"{'https' if secure else 'http'}://{parts.hostname}{port}",
            aws_access_key_id=unquote(parts.username or ""),
            aws_secret_access_key=unquote(parts.password or ""),
            region_name=options.get("region", "us-east-1"),
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                          connect_timeout=5, read_timeout=30))

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:
            self.client.create_bucket(Bucket=self.bucket)

    def writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, check_key(key))

    def read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_key(key)
        if length == 0:
            return iter(())
        extra: dict[str, str] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{end}"
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
        except Exception as exc:
            if _missing(exc):
                raise BlobNotFound(key) from None
            if "InvalidRange" in str(exc):  # offset at or past the end
                return iter(())
            raise
        body = answer["Body"]
        return self._chunks(body)

    @staticmethod
    def _chunks(body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except Exception as exc:
            if _missing(exc):
                raise BlobNotFound(key) from None
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + check_key(key))

    def close(self) -> None:
        self.client.close()

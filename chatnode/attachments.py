"""The attachment rules: uploads (size, type, images cleaned), which message a file goes
with, and who may download it. Handlers (``chatnode/http.py``) only feed bytes in and write
what comes out; the WebSocket ``message`` frame and the REST message path (issue 16) both call
:meth:`AttachmentService.attach`.

Uploads stream: the multipart body is parsed as it arrives (``streaming_form_data``) into a
temporary file on disk (never memory), counted against the site's limit as it comes, its type
told from its first bytes; once complete it is checked (images decoded and re-encoded without
metadata, a thumbnail made), copied into the blob store, and only then recorded. On any failure
the temporary file, any blob written and the row are all dropped: nothing half-written stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget

from chatnode.errors import ServiceError
from tidedesk.attachment_rules import (
    IMAGE_TYPES,
    SNIFF_BYTES,
    SiteLimits,
    check_link,
    default_limits,
    human_size,
    safe_name,
    sign_link,
    sniff,
)
from tidedesk.auth import Principal
from tidedesk.blobs import THUMB_SUFFIX, BlobNotFound, BlobStore
from tidedesk.frames import ATTACHMENT_URL, AttachmentMeta
from tidedesk.images import ImageRefused, reencode
from tidedesk.settings import Settings
from tidedesk.storage import Storage, new_id
from tidedesk.storage.attachments import AttachmentInUse
from tidedesk.storage.records import Attachment

log = logging.getLogger(__name__)

# Bytes of multipart framing (boundaries, part headers) allowed on top of the file itself when
# the Content-Length is checked before the body is read.
MULTIPART_OVERHEAD = 16 * 1024
# Threads for blob reads/writes and image decoding: uploads and downloads never block the loop.
BLOB_THREADS = 4
# A file uploaded but never sent with a message is deleted after this long (the widget sends
# right after the upload; a day covers a visitor who went offline in between).
UNSENT_MAX_AGE_SECS = 24 * 3600


class _SpoolTarget(BaseTarget):  # type: ignore[misc]
    """The ``file`` part: written to a temporary file as it arrives, counted, and sniffed."""

    def __init__(self, limits: SiteLimits, spool_dir: str | None) -> None:
        super().__init__()
        self.limits = limits
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=spool_dir)
        self.size = 0
        self.head = b""
        self.content_type: str | None = None
        self.started = False

    def on_start(self) -> None:
        self.started = True

    def on_data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        error = self.limits.size_error(self.size)
        if error:
            raise ServiceError(413, "file_too_large", error)
        if self.content_type is None:
            self.head += chunk[:SNIFF_BYTES - len(self.head)]
            if len(self.head) >= SNIFF_BYTES:
                self.decide_type()
        self.file.write(chunk)

    def decide_type(self) -> str:
        if self.content_type is None:
            self.content_type = sniff(self.head)
            error = self.limits.type_error(self.content_type)
            if error:
                raise ServiceError(415, "unsupported_type", error)
        return self.content_type


class Upload:
    """One upload in flight: :meth:`feed` each chunk of the body, then :meth:`finish`, or
    :meth:`discard` when the request ends early. Raises :class:`ServiceError` (413, 415, 400)
    as soon as the bytes show the upload cannot succeed."""

    def __init__(self, service: AttachmentService, principal: Principal, limits: SiteLimits,
                 headers: Mapping[str, str], visitor_id: str) -> None:
        self._service = service
        self.principal = principal
        self.visitor_id = visitor_id
        self.limits = limits
        self.received = 0
        self._max_body = limits.max_bytes + MULTIPART_OVERHEAD
        try:
            self._parser = StreamingFormDataParser(headers=dict(headers))
        except ParseFailedException:
            raise ServiceError(400, "invalid_body", "send multipart/form-data with the file in "
                               "the field 'file'") from None
        self.target = _SpoolTarget(limits, service.spool_dir)
        self._parser.register("file", self.target)

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self._max_body:
            raise ServiceError(413, "file_too_large", self.limits.size_error(
                self.limits.max_bytes + 1) or "too large")
        try:
            self._parser.data_received(chunk)
        except ServiceError:
            raise
        except ParseFailedException:
            raise ServiceError(400, "invalid_body", "the multipart body is malformed; send the "
                               "file in the field 'file'") from None

    def discard(self) -> None:
        self.target.file.close()

    async def finish(self) -> dict[str, Any]:
        try:
            return await self._service.store_upload(self)
        finally:
            self.discard()


@dataclass(frozen=True)
class Download:
    """What a handler streams: the record, which variant, and a way to read a byte range."""

    record: Attachment
    content_type: str
    size: int
    etag: str
    read: Callable[[int, int | None], Iterator[bytes]]


class AttachmentService:
    def __init__(self, *, settings: Settings, storage: Storage, blobs: BlobStore,
                 can_see: Callable[[Principal, str], Any], clock: Callable[[], float] = time.time,
                 spool_dir: str | None = None) -> None:
        self.settings = settings
        self.storage = storage
        self.blobs = blobs
        self.clock = clock
        self.spool_dir = spool_dir
        self._can_see = can_see  # Conversations.agent_can_see: raises ServiceError 403/404
        self.pool = ThreadPoolExecutor(max_workers=BLOB_THREADS,
                                       thread_name_prefix="tidedesk-blobs")
        self._link_key = hashlib.sha256(b"tidedesk attachment links\x00"
                                        + settings.jwt_secret.encode()).digest()
        self.default_limits = default_limits(settings.attachment_max_bytes,
                                             settings.attachment_types)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def limits_for(self, site: str = "default") -> SiteLimits:
        """The limits of a site; every site has the default ones until sites (issue 16)
        carry their own."""
        return self.default_limits

    # -- uploads ---------------------------------------------------------------------------
    def begin_upload(self, principal: Principal, headers: Mapping[str, str]) -> Upload:
        """Check what the headers tell before any byte of the body is read: 413 on a
        Content-Length above the limit, 400 when it is not a multipart form."""
        limits = self.limits_for()
        length = headers.get("Content-Length")
        if length is not None and (not length.isdigit()
                                   or int(length) > limits.max_bytes + MULTIPART_OVERHEAD):
            raise ServiceError(413, "file_too_large", limits.size_error(
                limits.max_bytes + 1) or "too large")
        visitor_id = principal.id if principal.kind == "visitor" else ""
        return Upload(self, principal, limits, headers, visitor_id)

    async def store_upload(self, upload: Upload) -> dict[str, Any]:
        target = upload.target
        if not target.started:
            raise ServiceError(400, "missing_file", "send the file in the multipart field "
                               "'file'")
        if target.size == 0:
            raise ServiceError(400, "empty_file", "the file is empty: choose a file with "
                               "something in it")
        content_type = target.decide_type()
        name = safe_name(target.multipart_filename, content_type)
        att_id = new_id()
        try:
            size, etag, thumb = await self._run(self._write_blobs, target.file, content_type,
                                                att_id)
        except ImageRefused as exc:
            raise ServiceError(415, exc.code, str(exc)) from None
        who = f"{upload.principal.kind}:{upload.principal.id}"
        try:
            await self.storage.attachments.create(
                id=att_id, uploader=who, visitor_id=upload.visitor_id, name=name,
                content_type=content_type, size=size, etag=etag, thumbnail=thumb)
        except BaseException:
            await self._run(self._delete_blobs, att_id)
            raise
        log.info("attachment stored", extra={"attachment_id": att_id, "size": size,
                                             "content_type": content_type})
        return {"id": att_id, "name": name, "content_type": content_type, "size": size,
                "url": ATTACHMENT_URL.format(att_id)}

    def _write_blobs(self, spool: IO[bytes], content_type: str, att_id: str
                     ) -> tuple[int, str, bool]:
        """(size, etag, has thumbnail): the checked file copied into the blob store, in a
        thread. Images are re-encoded first (into more temporary files)."""
        spool.seek(0)
        source: IO[bytes] = spool
        thumb: IO[bytes] | None = None
        clean: IO[bytes] | None = None
        try:
            if content_type in IMAGE_TYPES:
                clean = tempfile.TemporaryFile(dir=self.spool_dir)
                thumb = tempfile.TemporaryFile(dir=self.spool_dir)
                reencode(spool, content_type, clean, thumb,
                         max_pixels=self.settings.attachment_max_pixels)
                clean.seek(0)
                source = clean
            size, etag = self._copy(source, att_id)
            if thumb is not None:
                thumb.seek(0)
                try:
                    self._copy(thumb, att_id + THUMB_SUFFIX)
                except BaseException:
                    self.blobs.delete(att_id)
                    raise
            return size, etag, thumb is not None
        finally:
            for f in (clean, thumb):
                if f is not None:
                    f.close()

    def _copy(self, source: IO[bytes], key: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with self.blobs.writer(key) as writer:
            while chunk := source.read(64 * 1024):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
            writer.commit()
        return size, digest.hexdigest()

    def _delete_blobs(self, att_id: str) -> None:
        self.blobs.delete(att_id)
        self.blobs.delete(att_id + THUMB_SUFFIX)

    # -- messages --------------------------------------------------------------------------
    async def attach(self, ids: list[str], *, uploader: str, conversation_id: str,
                     message_id: str, visitor_id: str,
                     private: bool = False) -> tuple[AttachmentMeta, ...]:
        """The files of one message, tied to it (the rule the WebSocket ``message`` frame and
        the REST message path both call). Each must be the sender's own upload, not sent with
        another message; sending the same message again (same client id) reuses them. A file
        sent with a private note is not the visitor's to download."""
        if not ids:
            return ()
        try:
            records = await self.storage.attachments.bind(
                ids, uploader=uploader, conversation_id=conversation_id, message_id=message_id,
                visitor_id="" if private else visitor_id)
        except AttachmentInUse as exc:
            if exc.reason == "used_elsewhere":
                raise ServiceError(409, "attachment_in_use", f"attachment {exc.attachment_id} "
                                   "was already sent with another message: upload the file "
                                   "again") from None
            raise ServiceError(400, "invalid_attachment", f"attachment {exc.attachment_id} is "
                               "not a file you uploaded: upload it with POST "
                               "/api/v1/attachments first") from None
        return tuple(AttachmentMeta(r.id, r.name, r.content_type, r.size) for r in records)

    # -- downloads -------------------------------------------------------------------------
    async def authorise(self, att_id: str, principal: Principal | None, *,
                        expires: str | None = None, signature: str | None = None) -> Attachment:
        """The attachment, if the signed link or ``principal`` may read it; ServiceError 404
        otherwise (403 for an agent who may not see its conversation)."""
        record = await self.storage.attachments.get(att_id)
        if record is None:
            raise ServiceError(404, "not_found", "no such attachment")
        if check_link(self._link_key, att_id, expires, signature, self.clock()):
            return record
        if principal is None:
            raise ServiceError(401, "not_authenticated", "send a bearer token, or use a signed "
                               "link from GET /api/v1/attachments/{id}/link")
        who = f"{principal.kind}:{principal.id}"
        if record.uploader == who:
            return record
        if principal.kind == "visitor":
            if record.visitor_id and record.visitor_id == principal.id:
                return record
            raise ServiceError(403, "forbidden", "this file is not in your conversation")
        if record.conversation_id is None:
            raise ServiceError(404, "not_found", "no such attachment")
        await self._can_see(principal, record.conversation_id)
        return record

    def link(self, record: Attachment) -> dict[str, Any]:
        """Signed links for ``<img>`` and download anchors, which cannot send a bearer
        token: bound to this attachment, valid for ``TIDEDESK_ATTACHMENT_LINK_TTL_S``."""
        ttl = self.settings.attachment_link_ttl_s
        expires = int(self.clock()) + ttl
        query = f"?expires={expires}&sig={sign_link(self._link_key, record.id, expires)}"
        url = ATTACHMENT_URL.format(record.id)
        out: dict[str, Any] = {"url": url + query, "expires_in": ttl}
        if record.thumbnail:
            out["thumbnail_url"] = url + "/thumbnail" + query
        return out

    async def download(self, record: Attachment, *, thumbnail: bool) -> Download:
        if thumbnail and not record.thumbnail:
            raise ServiceError(404, "not_found", "this attachment has no thumbnail")
        key = record.id + (THUMB_SUFFIX if thumbnail else "")
        try:
            size = await self._run(self.blobs.size, key)
        except BlobNotFound:
            raise ServiceError(404, "not_found", "the file is gone (deleted)") from None
        return Download(record=record, content_type="image/png" if thumbnail
                        else record.content_type, size=size,
                        etag=f'"{record.etag[:32]}{"t" if thumbnail else ""}"',
                        read=lambda offset, length: self.blobs.read(key, offset, length))

    async def next_chunk(self, chunks: Iterator[bytes]) -> bytes | None:
        return await self._run(next, chunks, None)  # type: ignore[no-any-return]

    # -- erasure and retention (issue 18 calls these) ----------------------------------------
    async def delete_for_conversation(self, conversation_id: str) -> int:
        """Delete every file sent in a conversation (rows, then bytes); returns how many."""
        ids = await self.storage.attachments.take_for(conversation_id=conversation_id)
        for att_id in ids:
            await self._run(self._delete_blobs, att_id)
        return len(ids)

    async def delete_for_visitor(self, visitor_id: str) -> int:
        """Delete every file a visitor uploaded or was sent, in all their conversations."""
        ids = await self.storage.attachments.take_for(visitor_id=visitor_id)
        for att_id in ids:
            await self._run(self._delete_blobs, att_id)
        return len(ids)

    async def sweep_unsent(self) -> int:
        """Delete files never sent within :data:`UNSENT_MAX_AGE_SECS` (and partial files a
        crashed process left); the chat node runs it periodically. Returns how many."""
        ids = await self.storage.attachments.take_unsent(self.clock() - UNSENT_MAX_AGE_SECS)
        for att_id in ids:
            await self._run(self._delete_blobs, att_id)
        sweep = getattr(self.blobs, "sweep_partials", None)
        if sweep is not None:
            await self._run(sweep)
        return len(ids)

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.blobs.close()


def describe_limit(limits: SiteLimits) -> dict[str, Any]:
    """What the widget and console show before an upload starts."""
    return {"max_bytes": limits.max_bytes, "max_size": human_size(limits.max_bytes),
            "types": sorted(limits.types)}


__all__ = ["AttachmentService", "Download", "Upload", "describe_limit"]

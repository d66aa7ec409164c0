"""Attachments against a real embedded server: upload, send with a message, resume and
history, download with its access matrix and headers, the bad-input table of issue 15, and
erasure. Each bad input gets a clear 4xx or error frame; nothing half-written is stored; the
server keeps serving."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.clients import (
    add_agent,
    agent_socket,
    embedded,
    login,
    new_visitor,
    wait_agent_online,
)
from tests.support.routing import GENERAL_ONLY
from tests.support.uploads import fetch, raw_request, upload
from tidedesk.attachment_rules import human_size, safe_name, sniff
from tidedesk.runtime import Runtime


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 90))


def png(w: int = 64, h: int = 48, mode: str = "RGB", **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), "red" if mode == "RGB" else 1).save(buf, "PNG", **save)
    return buf.getvalue()


def jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x013B] = "Jane Customer"  # Artist
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.0)
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), "blue").save(buf, "JPEG", exif=exif)
    return buf.getvalue()


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n" + b"x" * 3000


def stored_files(rt: Runtime) -> list[Path]:
    root = Path(rt.settings.data_dir) / "attachments"
    return sorted(p for p in root.rglob("*") if p.is_file())


def head(token: str, length: int, boundary: str = "b0undary") -> bytes:
    return (f"POST /api/v1/attachments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_pure_rules() -> None:
    assert sniff(png()) == "image/png"
    assert sniff(b"MZ\x90\x00rest") == "application/x-msdownload"
    assert sniff(b'<?xml version="1.0"?><svg xmlns="x"><script>alert(1)</script></svg>') \
        == "image/svg+xml"
    assert sniff("plain words, 中文".encode()) == "text/plain"
    assert safe_name("../../etc/pass\x01wd.txt", "text/plain") == "passwd.txt"
    assert safe_name("C:\\Users\\x\\invoice.exe", "image/png") == "invoice.exe.png"
    assert safe_name("\x00\x1f", "application/pdf") == "file.pdf"
    assert safe_name("photo.JPEG", "image/jpeg") == "photo.JPEG"
    assert human_size(10 * 1024 * 1024) == "10 MB"


async def _world(rt: Runtime) -> dict[str, Any]:
    owner_id = add_agent(rt, "owner@shop.test")
    add_agent(rt, "other@shop.test", pools=("elsewhere",))
    add_agent(rt, "super@shop.test", pools=("elsewhere",), role="supervisor")
    owner = await agent_socket(rt, "owner@shop.test")
    await wait_agent_online(rt, owner_id)
    vid_a, tok_a, visitor_a = await new_visitor(rt, name="Alice")
    conv_a = visitor_a.of_type("hello")[-1]["conversation_id"]
    await owner.wait_type("assigned", conversation_id=conv_a)
    _, tok_b, visitor_b = await new_visitor(rt, name="Bob")
    return {"owner": owner, "a": visitor_a, "b": visitor_b, "conv_a": conv_a, "tok_a": tok_a,
            "tok_b": tok_b, "vid_a": vid_a, "owner_tok": await login(rt, "owner@shop.test"),
            "other_tok": await login(rt, "other@shop.test"),
            "super_tok": await login(rt, "super@shop.test")}


def test_screenshot_round_trip_resume_history_and_access_matrix(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            w = await _world(rt)
            port = rt.port
            status, att = await upload(port, w["tok_a"], jpeg_with_gps(), "../me/parcel.jpg")
            assert status == 201, att
            assert att["name"] == "parcel.jpg" and att["content_type"] == "image/jpeg"
            # Sent by id with an empty body; acked like text, delivered with the metadata.
            await w["a"].send({"type": "message", "id": "m-photo", "body": "",
                               "attachments": [att["id"]]})
            ack = await w["a"].wait_type("ack", id="m-photo")
            # A resend with the same client id (a reconnect) reuses the file: same ack.
            await w["a"].send({"type": "message", "id": "m-photo", "body": "",
                               "attachments": [att["id"]]})
            await w["a"].wait_for(lambda f: f.get("type") == "ack" and f.get("id") == "m-photo",
                                  start=len(w["a"].frames) - 0)
            assert [f["seq"] for f in w["a"].of_type("ack") if f["id"] == "m-photo"] == \
                [ack["seq"]] * 2
            got = await w["owner"].wait_type("message", id="m-photo")
            assert got["attachments"] == [{k: att[k] for k in ("id", "name", "content_type",
                                                               "size", "url")}]
            # Resume and history carry it too.
            await w["owner"].send({"type": "resume", "conversation_id": w["conv_a"],
                                   "after_seq": 0})
            status, _, page = await fetch(port, f"/api/v1/conversations/{w['conv_a']}/messages",
                                          w["owner_tok"])
            import json
            history = json.loads(page)["messages"]
            assert history[-1]["attachments"][0]["id"] == att["id"]
            await asyncio.sleep(0.3)  # the router's batch reaches the database
            url = att["url"]
            # The stored image is re-encoded: no EXIF, no GPS, the pixels kept.
            status, headers, body = await fetch(port, url, w["owner_tok"])
            assert status == 200
            assert b"SpyCam" not in body and b"Jane Customer" not in body
            img = Image.open(io.BytesIO(body))
            assert img.size == (400, 300) and not dict(img.getexif())
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in headers["Content-Security-Policy"]
            # Shops embed the widget on their own sites: the <img> must load there.
            assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
            assert headers["Content-Disposition"].startswith("inline")
            # ETag and Range.
            status, _, _ = await fetch(port, url, w["owner_tok"],
                                       {"If-None-Match": headers["Etag"]})
            assert status == 304
            status, h2, part = await fetch(port, url, w["owner_tok"], {"Range": "bytes=2-11"})
            assert status == 206 and part == body[2:12]
            assert h2["Content-Range"] == f"bytes 2-11/{len(body)}"
            status, _, _ = await fetch(port, url, w["owner_tok"],
                                       {"Range": f"bytes={len(body)}-"})
            assert status == 416
            # Thumbnail.
            status, h3, thumb = await fetch(port, url + "/thumbnail", w["owner_tok"])
            assert status == 200 and h3["Content-Type"] == "image/png"
            assert max(Image.open(io.BytesIO(thumb)).size) <= 320
            # The access matrix.
            matrix = {"visitor A (its visitor)": (w["tok_a"], 200),
                      "assigned agent": (w["owner_tok"], 200),
                      "supervisor": (w["super_tok"], 200),
                      "agent of another pool": (w["other_tok"], 403),
                      "visitor B": (w["tok_b"], 403),
                      "no token": (None, 401),
                      "forged token": ("x.y.z", 401)}
            for who, (token, expected) in matrix.items():
                got_status, _, _ = await fetch(port, url, token)
                assert got_status == expected, who
            # Signed links: for <img>, bound to one attachment, expiring.
            status, _, link_raw = await fetch(port, url + "/link", w["tok_a"])
            link = json.loads(link_raw)
            assert status == 200 and link["expires_in"] == rt.settings.attachment_link_ttl_s
            assert (await fetch(port, link["url"]))[0] == 200
            assert (await fetch(port, link["thumbnail_url"]))[0] == 200
            assert (await fetch(port, link["url"].replace("sig=", "sig=0")))[0] == 401
            _, other = await upload(port, w["tok_a"], b"another file", "b.txt")
            assert (await fetch(port, link["url"].replace(att["id"], other["id"])))[0] == 401
            rt.node.service.attachments.clock = lambda: time.time() + 3600  # type: ignore
            assert (await fetch(port, link["url"]))[0] == 401
            rt.node.service.attachments.clock = time.time  # type: ignore
            assert (await fetch(port, url + "/link", w["tok_b"]))[0] == 403
            # An agent's PDF: a download, never inline; a note's file is not the visitor's.
            _, pdf = await upload(port, w["owner_tok"], PDF, "manual.pdf")
            await w["owner"].send({"type": "message", "conversation_id": w["conv_a"],
                                   "id": "m-pdf", "body": "the manual",
                                   "attachments": [pdf["id"]]})
            seen = await w["a"].wait_type("message", id="m-pdf")
            assert seen["attachments"][0]["content_type"] == "application/pdf"
            status, h4, body4 = await fetch(port, pdf["url"], w["tok_a"])
            assert status == 200 and body4 == PDF
            assert h4["Content-Disposition"].startswith("attachment")
            _, secret = await upload(port, w["owner_tok"], b"internal notes", "n.txt")
            await w["owner"].send({"type": "note", "conversation_id": w["conv_a"],
                                   "id": "n-1", "body": "", "attachments": [secret["id"]]})
            await w["owner"].wait_type("ack", id="n-1")
            assert (await fetch(port, secret["url"], w["tok_a"]))[0] == 403
            assert (await fetch(port, secret["url"], w["super_tok"]))[0] == 200
            # Deleting the conversation's files (erasure, retention) removes rows and bytes.
            files_before = len(stored_files(rt))
            removed = await rt.node.service.attachments.delete_for_conversation(w["conv_a"])
            assert removed == 3
            assert len(stored_files(rt)) == files_before - 4  # the photo's thumbnail too
            assert (await fetch(port, url, w["owner_tok"]))[0] == 404
            assert await rt.node.service.attachments.delete_for_visitor(w["vid_a"]) == 1
            assert stored_files(rt) == []
            for c in (w["owner"], w["a"], w["b"]):
                await c.close()

    run(scenario())


def test_bad_input_table(tmp_path: Path) -> None:
    """Every row: a clear 4xx or error frame; nothing half-written; the server keeps
    serving (a good upload and message work after each row)."""

    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, attachment_upload_timeout_s=1,
                            attachment_max_pixels=1_000_000) as rt:
            w = await _world(rt)
            port, tok = rt.port, w["tok_a"]
            full = png(400, 300)
            rows: list[tuple[str, bytes, str, int, str]] = [
                ("empty file", b"", "empty.txt", 400, "empty_file"),
                ("zero-byte image", b"", "zero.png", 400, "empty_file"),
                ("truncated PNG", full[: len(full) // 2], "cut.png", 415, "not_decodable"),
                ("decompression bomb", png(2000, 2000, mode="1"), "bomb.png", 415,
                 "too_many_pixels"),
                (".exe renamed .png", b"MZ\x90\x00\x03" + b"\x00" * 600, "setup.png", 415,
                 "unsupported_type"),
                ("SVG with script", b'<svg xmlns="http://www.w3.org/2000/svg"><script>'
                 b"alert(document.cookie)</script></svg>", "cat.svg", 415, "unsupported_type"),
                ("HTML page", b"<!doctype html><script>steal()</script>", "a.txt", 415,
                 "unsupported_type"),
                ("over the size limit", b"a" * (rt.settings.attachment_max_bytes + 1),
                 "big.txt", 413, "file_too_large"),
            ]
            for what, data, name, expected, code in rows:
                status, body = await upload(port, tok, data, name)
                assert (status, body["error"]["code"]) == (expected, code), what
                assert body["error"]["message"], what
            assert stored_files(rt) == [], "nothing half-written"
            # A name with path separators and control characters is kept as its last segment.
            status, ok = await upload(port, tok, b"order 1234", "..\\..\\x/ev\x07il\x1b.txt")
            assert status == 201 and ok["name"] == "evil.txt"
            # A 2 GB Content-Length: 413 at once, before any of the body is sent.
            started = time.monotonic()
            status, body_raw = await raw_request(port, head(tok, 2 * 1024**3), read_timeout=5)
            assert status == 413 and b"10 MB" in body_raw
            assert time.monotonic() - started < 3
            # A slow upload that never ends: 408 after the body timeout, nothing kept.
            status, body_raw = await raw_request(
                port, head(tok, 50_000), b'--b0undary\r\nContent-Disposition: form-data; '
                b'name="file"; filename="slow.txt"\r\n\r\nthe first bytes only', read_timeout=5)
            assert status == 408 and b"upload_timeout" in body_raw
            # Not multipart at all.
            status, body_raw = await raw_request(
                port, head(tok, 2).replace(b"multipart/form-data; boundary=b0undary",
                                           b"application/json"), b"{}")
            assert status == 400
            assert len(stored_files(rt)) == 1
            # Ids: another visitor's file, an agent using a visitor's file, used twice,
            # from another conversation; each an error frame naming the message.
            await w["b"].send({"type": "message", "id": "b1", "body": "",
                               "attachments": [ok["id"]]})
            err = await w["b"].wait_type("error", id="b1")
            assert err["code"] == "invalid_attachment"
            await w["owner"].send({"type": "message", "conversation_id": w["conv_a"],
                                   "id": "o1", "body": "x", "attachments": [ok["id"]]})
            assert (await w["owner"].wait_type("error", id="o1"))["code"] == \
                "invalid_attachment"
            await w["a"].send({"type": "message", "id": "a1", "body": "",
                               "attachments": [ok["id"]]})
            await w["a"].wait_type("ack", id="a1")
            await w["a"].send({"type": "message", "id": "a2", "body": "again",
                               "attachments": [ok["id"]]})
            assert (await w["a"].wait_type("error", id="a2"))["code"] == "attachment_in_use"
            _, mine = await upload(port, w["owner_tok"], b"label", "label.txt")
            _, _, visitor_c = await new_visitor(rt, name="Carol")
            conv_c = visitor_c.of_type("hello")[-1]["conversation_id"]
            await w["owner"].wait_type("assigned", conversation_id=conv_c)
            await w["owner"].send({"type": "message", "conversation_id": w["conv_a"],
                                   "id": "o2", "body": "", "attachments": [mine["id"]]})
            await w["owner"].wait_type("ack", id="o2")
            await w["owner"].send({"type": "message", "conversation_id": conv_c,
                                   "id": "o3", "body": "", "attachments": [mine["id"]]})
            assert (await w["owner"].wait_type("error", id="o3"))["code"] == \
                "attachment_in_use"
            # Malformed attachment lists are refused by the frame check.
            for bad in ("abc", ["not-an-id"], [ok["id"], ok["id"]], ["0" * 32] * 11):
                await w["a"].send({"type": "message", "id": "bad", "body": "x",
                                   "attachments": bad})
                assert (await w["a"].wait_for(
                    lambda f: f.get("type") == "error" and f.get("id") == "bad",
                    start=len(w["a"].frames) - 1))["code"] == "invalid_field"
            assert not w["a"].closed.done() and not w["b"].closed.done()
            # Still serving everyone.
            assert (await upload(port, tok, png(), "fine.png"))[0] == 201
            assert (await w["a"].say("still here"))["type"] == "ack"
            for c in (w["owner"], w["a"], w["b"], visitor_c):
                await c.close()

    run(scenario())


@pytest.mark.parametrize("encrypt", [True, False])
def test_encrypted_at_rest(tmp_path: Path, encrypt: bool) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY, encrypt_message_bodies=encrypt) as rt:
            _, tok, visitor = await new_visitor(rt)
            secret = b"IBAN DE00 1234 " * 10000
            status, att = await upload(rt.port, tok, secret, "bank.txt")
            assert status == 201
            raw = b"".join(p.read_bytes() for p in stored_files(rt))
            assert (b"IBAN" not in raw and raw.startswith(b"TDB1")) == encrypt
            status, _, body = await fetch(rt.port, att["url"], tok)
            assert status == 200 and body == secret
            status, _, part = await fetch(rt.port, att["url"], tok,
                                          {"Range": "bytes=70000-70009"})
            assert status == 206 and part == secret[70000:70010]
            await visitor.close()

    run(scenario())


def test_unsent_uploads_are_swept_after_a_day(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path, GENERAL_ONLY) as rt:
            _, tok, visitor = await new_visitor(rt)
            _, sent = await upload(rt.port, tok, b"sent", "a.txt")
            _, unsent = await upload(rt.port, tok, b"forgotten", "b.txt")
            await visitor.send({"type": "message", "id": "s1", "body": "",
                                "attachments": [sent["id"]]})
            await visitor.wait_type("ack", id="s1")
            service = rt.node.service.attachments  # type: ignore[union-attr]
            assert await service.sweep_unsent() == 0  # too young
            service.clock = lambda: time.time() + 2 * 86400
            assert await service.sweep_unsent() == 1
            service.clock = time.time
            assert (await fetch(rt.port, unsent["url"], tok))[0] == 404
            assert (await fetch(rt.port, sent["url"], tok))[0] == 200
            assert len(stored_files(rt)) == 1
            await visitor.close()

    run(scenario())

"""Attachments in a real Chromium: a visitor pastes a screenshot, the agent sees its preview,
enlarges it and downloads the original; the agent sends a PDF and the visitor downloads it;
an upload while offline says so (translated), and works once back online."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import DEMO_EMAIL, DEMO_PASSWORD, Server, screenshot
from tests.browser.ui_pages import Console, Widget

pytestmark = pytest.mark.browser

PASTE_JS = """(el, b64) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], "image.png", { type: "image/png" }));
  el.dispatchEvent(new ClipboardEvent("paste",
    { clipboardData: dt, bubbles: true, cancelable: true }));
}"""
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n" + b"manual page " * 400


def _screenshot_png() -> bytes:
    img = Image.new("RGB", (640, 360), (250, 250, 250))
    for x in range(100, 540):
        for y in range(120, 140):
            img.putpixel((x, y), (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_screenshot_and_pdf_both_ways(server: Server, new_context: Any, tmp_path: Path) -> None:
    agent = Console(new_context().new_page(), server.base_url).sign_in(DEMO_EMAIL, DEMO_PASSWORD)
    visitor_ctx = new_context()
    visitor = Widget(visitor_ctx.new_page(), server.base_url).open()
    visitor.send("My parcel arrived broken")
    agent.open_chat_with("parcel arrived broken")
    agent.expect_message("My parcel arrived broken")

    # Offline: the upload fails with a translated message that says what to do.
    shot = _screenshot_png()
    visitor_ctx.set_offline(True)
    visitor.page.get_by_test_id("td-input").evaluate(PASTE_JS, base64.b64encode(shot).decode())
    expect(visitor.page.get_by_test_id("td-upload-error")).to_contain_text("check your connection")
    visitor_ctx.set_offline(False)
    expect(visitor.host).to_have_attribute("data-conn", "online")

    # Paste a screenshot: uploaded, sent by id, shown to both sides as an image.
    visitor.page.get_by_test_id("td-input").evaluate(PASTE_JS, base64.b64encode(shot).decode())
    mine = visitor.page.get_by_test_id("td-log").get_by_test_id("attachment-image")
    expect(mine).to_have_count(1)
    expect(visitor.page.get_by_test_id("td-upload-error")).to_be_hidden()
    preview = agent.page.get_by_test_id("chat-log").get_by_test_id("attachment-image")
    expect(preview).to_have_count(1)
    agent.page.wait_for_function(
        "() => { const i = document.querySelector('[data-testid=attachment-image]');"
        " return i && i.complete && i.naturalWidth > 0 && i.naturalWidth <= 320; }")
    preview.click()
    expect(agent.page.get_by_test_id("lightbox-image")).to_be_visible()
    screenshot(agent.page, "attachments-lightbox")
    with agent.page.expect_download() as got:
        agent.page.get_by_test_id("lightbox-download").click()
    saved = tmp_path / "shot.png"
    got.value.save_as(saved)
    original = Image.open(io.BytesIO(shot)).convert("RGB")
    downloaded = Image.open(saved).convert("RGB")
    assert downloaded.size == original.size
    assert downloaded.tobytes() == original.tobytes()  # the pixels, without any metadata
    agent.page.get_by_test_id("lightbox-close").click()

    # The agent sends a PDF; the visitor sees a chip with its name and size, and downloads it.
    agent.page.get_by_test_id("file-input").set_input_files(
        {"name": "manual.pdf", "mimeType": "application/pdf", "buffer": PDF})
    chip = visitor.page.get_by_test_id("attachment-file")
    expect(chip).to_have_count(1)
    expect(chip).to_contain_text("manual.pdf")
    expect(chip).to_contain_text("KB")
    expect(chip).to_have_attribute("href", re.compile(r"sig="))
    screenshot(visitor.page, "attachments-widget")
    with visitor.page.expect_download() as got_pdf:
        chip.click()
    pdf_path = tmp_path / "manual.pdf"
    got_pdf.value.save_as(pdf_path)
    assert pdf_path.read_bytes() == PDF

    # A file that is not allowed: the error is the translated one, and nothing is sent.
    agent.page.get_by_test_id("file-input").set_input_files(
        {"name": "setup.png", "mimeType": "image/png", "buffer": b"MZ\x90\x00" + b"\x00" * 600})
    expect(agent.page.get_by_test_id("upload-error")).to_contain_text("cannot be sent")
    expect(visitor.page.get_by_test_id("attachment-file")).to_have_count(1)

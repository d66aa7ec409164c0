"""Uploaded images: decoded in full, re-encoded without their metadata (EXIF, GPS, comments,
ICC profiles), turned upright, and given a thumbnail (Pillow).

Re-encoding from decoded pixels is what strips the metadata for certain: nothing of the
original file but its pixels reaches storage. A file that does not decode as the type its bytes
claim (truncated, corrupt, a zero-byte "image") raises :class:`ImageRefused`; so does an image
with more than ``max_pixels`` pixels (a decompression bomb: a few KB that decode to gigabytes).
Animated GIFs keep their first frame only.
"""

from __future__ import annotations

import warnings
from typing import IO

from PIL import Image, ImageOps

THUMB_PX = 320
_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


class ImageRefused(ValueError):
    """``code``: ``not_decodable`` or ``too_many_pixels``; the message says what to change."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def reencode(source: IO[bytes], content_type: str, out: IO[bytes], thumb: IO[bytes], *,
             max_pixels: int) -> None:
    """Decode ``source`` as ``content_type``; write the clean image to ``out`` and a PNG
    thumbnail (at most :data:`THUMB_PX` a side) to ``thumb``."""
    fmt = _FORMATS[content_type]
    # MAX_IMAGE_PIXELS is Pillow's global; every caller sets the same value from the settings.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=[fmt]) as img:
                if img.width * img.height > max_pixels:
                    raise Image.DecompressionBombError("too many pixels")
                img.load()
                clean = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused("too_many_pixels", f"the image has more than {max_pixels} pixels: "
                           "send a smaller one") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageRefused("not_decodable", f"the file is not a complete {fmt} image (it is "
                           "damaged or cut short): send it again") from None
    if fmt == "JPEG" and clean.mode not in ("RGB", "L"):
        clean = clean.convert("RGB")
    if fmt == "GIF" and clean.mode not in ("P", "L"):
        clean = clean.convert("P")
    # Nothing of the original's metadata may ride along: Pillow copies some of info (ICC,
    # EXIF, text chunks) into what it saves. Transparency is pixels, not metadata.
    clean.info = {k: v for k, v in clean.info.items() if k == "transparency"}
    clean.save(out, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    small = clean.convert("RGBA") if clean.mode in ("P", "LA", "PA") else clean.copy()
    small.thumbnail((THUMB_PX, THUMB_PX))
    small.save(thumb, format="PNG", optimize=True)

"""Decoding JSON from clients with the limits every entry point shares (pure): REST bodies,
WebSocket frames and the control plane's API all decode through :func:`loads`.

Python's decoder takes a lone surrogate escape (``"\\ud800"``), which no UTF-8 database column
can store, and a NUL, which SQL text and C libraries cut at; and nesting a few thousand deep
blows the recursion limit. Each was a 500 with a traceback; here each is a :class:`JsonRefused`
whose message says what to change.

Speed (issue 17: every WebSocket frame is decoded here): msgspec decodes first, and the walk of
:func:`check` runs only when the raw text could hide what it refuses. msgspec itself refuses a
lone surrogate (escaped or not), a raw control character and nesting past its own limit; a NUL
can only come from a ``\\u0000`` escape and nesting deeper than ``max_depth`` needs more than
``max_depth`` brackets, so text with neither skips the walk. Anything msgspec refuses is decoded
again by the standard library, so the answers (and what is accepted: ``NaN``, ``1e400``, UTF-16)
stay exactly those of ``json.loads`` plus :func:`check`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

# Deeper than any legal request (the deepest, a routing rule, is 5).
MAX_DEPTH = 32
_BAD_CHAR = re.compile("[\ud800-\udfff\x00]")
_decoder = msgspec.json.Decoder()


class JsonRefused(ValueError):
    """``code``: ``invalid_json``, ``too_deep`` or ``invalid_text``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_text(text: str) -> None:
    match = _BAD_CHAR.search(text)
    if match is not None:
        what = "a NUL character" if match.group() == "\x00" else (
            "a lone UTF-16 surrogate (\\ud800-\\udfff without its pair)")
        raise JsonRefused("invalid_text", f"a string holds {what}; send valid Unicode text")


def check(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings (keys too) that cannot be stored."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise JsonRefused("too_deep", f"JSON nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _may_hide_refused(raw: str | bytes, max_depth: int) -> bool:
    """Whether msgspec's answer for ``raw`` still needs :func:`check`: a NUL escape, or enough
    brackets to nest past ``max_depth`` (brackets inside strings only make this say yes)."""
    if isinstance(raw, str):
        return "\\u0000" in raw or raw.count("[") + raw.count("{") > max_depth
    return b"\\u0000" in raw or raw.count(b"[") + raw.count(b"{") > max_depth


def loads(raw: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode ``raw``; :class:`JsonRefused` for anything not valid, too deep or unstorable."""
    try:
        value = _decoder.decode(raw)
    except (msgspec.MsgspecError, RecursionError, UnicodeError, TypeError):
        return _stdlib_loads(raw, max_depth)  # the refusal (or the odd acceptance) it gives
    if _may_hide_refused(raw, max_depth):
        check(value, max_depth)
    return value


def _stdlib_loads(raw: str | bytes, max_depth: int) -> Any:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonRefused("too_deep", f"JSON nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonRefused("invalid_json", f"not valid JSON ({exc})") from None
    check(value, max_depth)
    return value

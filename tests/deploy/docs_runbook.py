"""docs/deploy.md's fenced blocks, in document order, with their docs-test markers.

A marker is an HTML comment on the line just before a fence (blank lines between allowed):

* ``<!-- docs-test: skip — REASON -->``: the block cannot run here (a second node, a real CA, a
  registry); the reason is reported.
* ``<!-- docs-test: reader-values -->``: the block sets values that are the reader's (``export
  STACK=tidedesk``); the test runs it with its own values for the names it chooses
  (:func:`with_values`), as a reader edits them.

A ``sh`` block without a marker runs. Any other ``docs-test:`` comment is an error, so a typo
cannot skip a block silently.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deploy.md"
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
SKIP = re.compile(r"^skip\s*[—–-]+\s*(\S.*)$")


@dataclass(frozen=True)
class Block:
    number: int  # 1-based, among all fenced blocks
    line: int  # of the opening fence
    lang: str
    text: str
    skip: str | None = None  # the reason
    reader_values: bool = False

    @property
    def runs(self) -> bool:
        return self.lang == "sh" and self.skip is None

    def where(self) -> str:
        return f"docs/deploy.md block {self.number} (line {self.line})"


def blocks(text: str | None = None) -> list[Block]:
    lines = (DOC.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"docs/deploy.md line {start + 1}: a fence that is never closed")
        i += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip, reader = None, False
        marker = MARKER.match(lines[before].strip()) if before >= 0 else None
        if marker is not None:
            directive = marker.group(1)
            if directive == "reader-values":
                reader = True
            elif (m := SKIP.match(directive)) is not None:
                skip = m.group(1)
            else:
                raise ValueError(f"docs/deploy.md line {before + 1}: unknown docs-test marker "
                                 f"{directive!r} (use 'skip — REASON' or 'reader-values')")
        elif "docs-test:" in lines[before]:
            raise ValueError(f"docs/deploy.md line {before + 1}: a docs-test marker must be "
                             "an HTML comment alone on its line")
        out.append(Block(len(out) + 1, start + 1, fence.group(1), "\n".join(body) + "\n",
                         skip, reader))
    return out


def with_values(block: Block, values: dict[str, str]) -> tuple[str, set[str]]:
    """The block's text with ``NAME=value`` replaced by the test's value for every NAME in
    ``values`` (a reader-values block only), and the names it replaced."""
    if not block.reader_values:
        return block.text, set()
    found: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        found.add(m.group(1))
        return f"{m.group(1)}={shlex.quote(values[m.group(1)])}"

    pattern = re.compile(r"(?<![\w$])(" + "|".join(map(re.escape, values)) + r")=(\S+)")
    return pattern.sub(sub, block.text), found

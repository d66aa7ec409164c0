"""Reading a visitor's e-mail reply (pure; no I/O): which conversation it names, and the new
text without the quoted history and the signature.

:func:`read_reply` returns a :class:`Reply`, or raises :class:`Refused` with a reason (a
short machine word, the poller's log field and metric label) for mail that must go nowhere:
too large, no plain-text part, an encoding that cannot be read, an auto-reply, or nothing new
once the quote is cut.

Stripping is done only where it is reliable: the text is cut at the first line that starts a
quote in the forms the common clients write (``On … wrote:``, ``在 … 写道：``, Outlook's
``-----Original Message-----`` and ``From:``/``发件人:`` header block), at the signature
separator ``-- ``, and trailing ``>`` lines are dropped. Anything else is kept: a reply with a
little too much is better than a reply with a sentence missing.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage

from tidedesk.mail.tokens import find_tokens

# Mail larger than this is refused before it is parsed (the poller checks the size the server
# reports first, so a huge attachment is never even downloaded). A text reply is a few KiB.
MAX_MAIL_BYTES = 1024 * 1024

_QUOTE_STARTS = (
    re.compile(r"^\s*On .{0,200}wrote:\s*$", re.IGNORECASE),
    re.compile(r"^\s*On .{0,200}$", re.IGNORECASE),  # "On <date>, <name>" + "wrote:" next line
    re.compile(r"^\s*在.{0,200}写道[：:]\s*$"),
    re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.IGNORECASE),
    re.compile(r"^\s*-{2,}\s*原始邮件\s*-{2,}\s*$"),
    re.compile(r"^\s*(From|发件人)\s*[:：].*$", re.IGNORECASE),
    re.compile(r"^_{10,}\s*$"),  # Outlook's rule above its header block
)
_SIGNATURE = re.compile(r"^-- ?$")
# Control characters other than tab and newline never belong in a chat message.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Refused(Exception):
    """The mail goes nowhere; ``reason`` says why (a metric label), the message more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    message_id: str  # without angle brackets ("" when the mail has none)
    tokens: tuple[str, ...]  # token-shaped strings, threading headers first
    sender: str
    text: str


def _header(msg: EmailMessage, name: str) -> str:
    try:
        values = msg.get_all(name) or []
        return " ".join(str(v) for v in values)
    except (ValueError, TypeError, LookupError):  # a header the parser cannot decode
        return ""


def _plain_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    if part is None:
        raise Refused("no_text", "the mail has no text/plain part")
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, ValueError) as exc:
        raise Refused("bad_encoding", f"the text part cannot be decoded: {exc}") from None
    if not isinstance(content, str):
        raise Refused("no_text", "the text part is not text")
    return content


def _is_quote_start(lines: list[str], i: int) -> bool:
    line = lines[i]
    if _QUOTE_STARTS[1].match(line) and not _QUOTE_STARTS[0].match(line):
        # "On Tue, 1 Dec 2026, Ann <a@b>" then "wrote:" on the next line (a wrapped header)
        return i + 1 < len(lines) and lines[i + 1].strip().lower().endswith("wrote:")
    if _QUOTE_STARTS[5].match(line):
        # An Outlook header block: From: then Sent:/Date:/发送时间 within two lines.
        return any(re.match(r"^\s*(Sent|Date|To|发送时间|日期)\s*[:：]", nxt, re.IGNORECASE)
                   for nxt in lines[i + 1:i + 3])
    return any(p.match(line) for j, p in enumerate(_QUOTE_STARTS) if j not in (1, 5))


def strip_reply(text: str) -> str:
    """The new part of a reply: before the quoted history and the signature."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line) or _is_quote_start(lines, i):
            break
        kept.append(line)
    while kept and (not kept[-1].strip() or kept[-1].lstrip().startswith(">")):
        kept.pop()
    return "\n".join(kept).strip()


def read_reply(raw: bytes, max_chars: int) -> Reply:
    """The reply in ``raw`` (an RFC 5322 message); :class:`Refused` when it must go nowhere.
    A text longer than ``max_chars`` (the chat's body limit) is cut to it."""
    if len(raw) > MAX_MAIL_BYTES:
        raise Refused("too_large", f"{len(raw)} bytes; the limit is {MAX_MAIL_BYTES}")
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as exc:  # the parser is lenient; this is a last resort, never a crash
        raise Refused("malformed", f"cannot parse the mail: {exc}") from None
    assert isinstance(msg, EmailMessage)
    auto = _header(msg, "Auto-Submitted").strip().lower()
    precedence = _header(msg, "Precedence").strip().lower()
    if (auto and auto != "no") or precedence in ("bulk", "junk", "auto_reply", "list"):
        raise Refused("auto_reply", "an automatic answer (Auto-Submitted / Precedence)")
    body = strip_reply(_CONTROL.sub("", _plain_part(msg)))
    if not body:
        raise Refused("empty", "nothing new above the quoted history")
    if len(body) > max_chars:
        body = body[:max_chars - 1] + "…"
    threading = " ".join(_header(msg, h) for h in ("In-Reply-To", "References"))
    addressed = " ".join(_header(msg, h) for h in ("To", "Cc", "Delivered-To", "X-Original-To"))
    plus = [t for a in re.findall(r"\+([^@\s<>]+)@", addressed) for t in find_tokens(a)]
    tokens = tuple(dict.fromkeys([*find_tokens(threading), *plus]))
    message_id = _header(msg, "Message-ID").strip().strip("<>").strip()
    return Reply(message_id=message_id, tokens=tokens, sender=_header(msg, "From"), text=body)

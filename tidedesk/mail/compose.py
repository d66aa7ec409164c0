"""Building the mails Tidedesk sends (pure; no I/O): a reply to an absent visitor and a
transcript, each ``multipart/alternative`` plain text + HTML in the visitor's language, with
``Message-ID``, ``In-Reply-To`` and ``References`` for threading and the reply token in the
``Message-ID`` and the ``Reply-To`` plus-address, so the visitor's answer finds its way back.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from tidedesk.i18n import text


@dataclass(frozen=True)
class Line:
    """One message of the conversation as a mail shows it."""

    sender: str  # visitor | agent | system
    name: str
    body: str
    ts: float


@dataclass(frozen=True)
class Envelope:
    """Who sends to whom, and the threading of this mail."""

    from_name: str
    from_address: str
    to: str
    message_id: str  # without the angle brackets
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_token: str | None = None


def message_id(kind: str, outbox_id: int, token: str | None, from_address: str) -> str:
    """A Message-ID unique per outbox row (so a retry sends the same one) that carries the
    reply token: ``td.<kind>.<row>.<token>@<domain of the sender>``."""
    domain = from_address.rsplit("@", 1)[-1]
    return f"td.{kind}.{outbox_id}{'.' + token if token else ''}@{domain}"


def plus_address(address: str, token: str) -> str:
    local, domain = address.rsplit("@", 1)
    return f"{local}+{token}@{domain}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _label(line: Line, locale: str) -> str:
    if line.sender == "agent" and line.name:
        return line.name
    return text(f"sender_{line.sender}", locale)


def _plain(intro: str, lines: Sequence[Line], locale: str, hint: str | None,
           link: str | None) -> str:
    out = [intro, ""]
    for line in lines:
        out.append(f"{_label(line, locale)} ({_when(line.ts)}):")
        out.extend(f"  {row}" for row in line.body.splitlines() or [""])
        out.append("")
    if hint:
        out.append(hint)
    if link:
        out.append(link)
    out += ["", "-- ", text("mail_footer", locale)]
    return "\n".join(out) + "\n"


def _html(intro: str, lines: Sequence[Line], locale: str, hint: str | None,
          link: str | None) -> str:
    esc = html.escape
    rows = []
    for line in lines:
        body = "<br>".join(esc(row) for row in line.body.splitlines())
        rows.append(f'<div style="margin:0 0 12px"><div style="color:#52606d;font-size:12px">'
                    f"{esc(_label(line, locale))} · {esc(_when(line.ts))}</div>"
                    f'<div style="white-space:pre-wrap">{body}</div></div>')
    parts = [f'<!doctype html><html lang="{esc(locale)}"><meta charset="utf-8">'
             '<body style="font:14px/1.5 system-ui,sans-serif;color:#1f2933">',
             f"<p>{esc(intro)}</p>", *rows]
    if hint:
        parts.append(f"<p>{esc(hint)}</p>")
    if link:
        parts.append(f'<p><a href="{esc(link, quote=True)}">{esc(text("mail_open_chat", locale))}'
                     "</a></p>")
    parts.append(f'<p style="color:#7b8794;font-size:12px">{esc(text("mail_footer", locale))}'
                 "</p></body></html>")
    return "".join(parts)


def _message(env: Envelope, subject: str, plain: str, rich: str, now: float) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr((env.from_name, env.from_address))
    msg["To"] = env.to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = f"<{env.message_id}>"
    if env.in_reply_to:
        msg["In-Reply-To"] = f"<{env.in_reply_to}>"
    if env.references:
        msg["References"] = " ".join(f"<{ref}>" for ref in env.references)
    if env.reply_token:
        msg["Reply-To"] = formataddr((env.from_name,
                                      plus_address(env.from_address, env.reply_token)))
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders must not answer
    msg.set_content(plain)
    msg.add_alternative(rich, subtype="html")
    return msg


def reply_mail(env: Envelope, *, shop: str, locale: str, lines: Sequence[Line], link: str,
               now: float) -> EmailMessage:
    """The mail to a visitor who was not connected when the agent wrote ``lines``."""
    intro = text("mail_reply_intro", locale, shop=shop)
    hint = text("mail_reply_hint", locale)
    return _message(env, text("mail_reply_subject", locale, shop=shop),
                    _plain(intro, lines, locale, hint, link),
                    _html(intro, lines, locale, hint, link), now)


def transcript_mail(env: Envelope, *, shop: str, locale: str, lines: Sequence[Line],
                    now: float) -> EmailMessage:
    """The whole conversation, as the visitor asked for it."""
    intro = text("mail_transcript_intro", locale, shop=shop)
    return _message(env, text("mail_transcript_subject", locale, shop=shop),
                    _plain(intro, lines, locale, None, None),
                    _html(intro, lines, locale, None, None), now)

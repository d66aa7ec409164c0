"""The mail servers' URLs, parsed and checked (pure; no I/O).

``TIDEDESK_SMTP_URL``: ``smtp://user:pass@host:port`` (plain, or STARTTLS with
``?starttls=true``), ``smtps://…`` (TLS from the first byte). ``TIDEDESK_IMAP_URL``:
``imap://`` or ``imaps://user:pass@host[:port]/MAILBOX`` (``INBOX`` when no mailbox is named).
User and password are URL-quoted (``%40`` for ``@``). A bad URL raises :class:`MailUrlError`
saying what to change; the settings name the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# A mailbox address as Tidedesk sends from: local@domain, no spaces.
_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class MailUrlError(ValueError):
    """The URL cannot name a mail server; the message says what to change."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    user: str | None
    password: str | None
    tls: bool  # TLS from the first byte (smtps)
    starttls: bool

    def describe(self) -> str:
        """For logs: never the password."""
        scheme = "smtps" if self.tls else "smtp"
        return f"{scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ImapTarget:
    host: str
    port: int
    user: str
    password: str
    tls: bool
    mailbox: str

    def describe(self) -> str:
        return f"{'imaps' if self.tls else 'imap'}://{self.host}:{self.port}/{self.mailbox}"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise MailUrlError(f"{_redact(url)} names no host")
    try:
        port = parts.port or default_port
    except ValueError:
        raise MailUrlError(f"{_redact(url)} has a port that is not a number 1-65535") from None
    return parts.hostname, port


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def parse_smtp_url(url: str) -> SmtpTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise MailUrlError(f"expected smtp://user:pass@host:port or smtps://..., got "
                           f"{_redact(url)}")
    tls = parts.scheme == "smtps"
    host, port = _host_port(url, 465 if tls else 25)
    query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - {"starttls"})
    if unknown:
        raise MailUrlError(f"unknown option(s) {', '.join(unknown)}; the only one is "
                           "?starttls=true")
    starttls_raw = query.get("starttls", "false")
    if starttls_raw not in _TRUE | _FALSE:
        raise MailUrlError(f"?starttls= must be true or false, got {starttls_raw!r}")
    starttls = starttls_raw in _TRUE
    if tls and starttls:
        raise MailUrlError("smtps:// is TLS already; drop ?starttls=true (or use smtp://)")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and user is None:
        raise MailUrlError("a password needs a user: smtp://user:pass@host:port")
    return SmtpTarget(host=host, port=port, user=user, password=password, tls=tls,
                      starttls=starttls)


def parse_imap_url(url: str) -> ImapTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("imap", "imaps"):
        raise MailUrlError(f"expected imap://user:pass@host/MAILBOX or imaps://..., got "
                           f"{_redact(url)}")
    tls = parts.scheme == "imaps"
    host, port = _host_port(url, 993 if tls else 143)
    if not parts.username or parts.password is None:
        raise MailUrlError("the mailbox needs a user and a password: "
                           "imap://user:pass@host/MAILBOX")
    if parts.query:
        raise MailUrlError("IMAP URLs take no ?options")
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    return ImapTarget(host=host, port=port, user=unquote(parts.username),
                      password=unquote(parts.password), tls=tls, mailbox=mailbox)


def parse_from_address(value: str) -> tuple[str, str]:
    """``"Shop support <help@shop.example>"`` or ``help@shop.example`` → (display name,
    address); MailUrlError when it holds no usable address."""
    name, address = parseaddr(value)
    if not _ADDRESS_RE.match(address):
        raise MailUrlError(f"expected an address like help@shop.example or "
                           f"'Shop <help@shop.example>', got {value!r}")
    return name, address

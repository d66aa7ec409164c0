"""The pure parts of mail (tidedesk/mail/): server URLs, reply tokens, the retry schedule,
building a mail and reading a reply, as tables of named cases; and the mail settings."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidedesk.mail.addresses import MailUrlError, parse_imap_url, parse_smtp_url
from tidedesk.mail.compose import Envelope, Line, message_id, reply_mail, transcript_mail
from tidedesk.mail.incoming import Refused, read_reply, strip_reply
from tidedesk.mail.links import LINK_CODE_RE, mail_link, new_link_code, refusal
from tidedesk.mail.retry import RetryPolicy
from tidedesk.mail.tokens import find_tokens, sign_reply_token, verify_reply_token
from tidedesk.settings import SettingsError, load_settings

SECRET = "s" * 40
CONV = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("url", "expected"), [
    ("smtp://127.0.0.1:2525", ("127.0.0.1", 2525, None, None, False, False)),
    ("smtp://u%40x:pw%3Ax@mail.example:587?starttls=true",
     ("mail.example", 587, "u@x", "pw:x", False, True)),
    ("smtps://u:hush@mail.example", ("mail.example", 465, "u", "hush", True, False)),
    ("smtp://mail.example", ("mail.example", 25, None, None, False, False)),
])
def test_smtp_urls(url: str, expected: tuple[object, ...]) -> None:
    t = parse_smtp_url(url)
    assert (t.host, t.port, t.user, t.password, t.tls, t.starttls) == expected
    assert t.password is None or t.password not in t.describe()  # logs never show it


@pytest.mark.parametrize(("url", "says"), [
    ("http://mail.example", "expected smtp://"),
    ("smtp://", "no host"),
    ("smtp://mail.example:99999", "port"),
    ("smtp://mail.example?starttls=maybe", "true or false"),
    ("smtp://mail.example?tls=1", "unknown option"),
    ("smtps://mail.example?starttls=true", "TLS already"),
    ("smtp://:secret@mail.example", "needs a user"),
])
def test_bad_smtp_urls(url: str, says: str) -> None:
    with pytest.raises(MailUrlError, match=says) as err:
        parse_smtp_url(url)
    assert "secret" not in str(err.value)


def test_imap_urls() -> None:
    t = parse_imap_url("imaps://help%40shop.example:pw@imap.example/Support%20Box")
    assert (t.host, t.port, t.user, t.password, t.tls, t.mailbox) == (
        "imap.example", 993, "help@shop.example", "pw", True, "Support Box")
    assert parse_imap_url("imap://u:p@h").mailbox == "INBOX"
    assert parse_imap_url("imap://u:p@h").port == 143
    for bad, says in (("imap://h/INBOX", "user and a password"), ("pop3://u:p@h", "imap://"),
                      ("imap://u:p@h/INBOX?x=1", "no \\?options")):
        with pytest.raises(MailUrlError, match=says):
            parse_imap_url(bad)


@pytest.mark.parametrize(("env", "says"), [
    ({"TIDEDESK_SMTP_URL": "smtp://h:25"}, "TIDEDESK_MAIL_FROM: needed"),
    ({"TIDEDESK_SMTP_URL": "mail://h", "TIDEDESK_MAIL_FROM": "a@b.co"}, "TIDEDESK_SMTP_URL:"),
    ({"TIDEDESK_SMTP_URL": "smtp://h", "TIDEDESK_MAIL_FROM": "nobody"}, "TIDEDESK_MAIL_FROM:"),
    ({"TIDEDESK_IMAP_URL": "imap://u:p@h/INBOX"}, "needs TIDEDESK_SMTP_URL"),
    ({"TIDEDESK_SMTP_URL": "smtp://h", "TIDEDESK_MAIL_FROM": "a@b.co",
      "TIDEDESK_IMAP_URL": "imap://h/INBOX"}, "TIDEDESK_IMAP_URL:"),
    ({"TIDEDESK_SMTP_URL": "smtp://h", "TIDEDESK_MAIL_FROM": "a@b.co",
      "TIDEDESK_MAIL_LINK_URL": "shop.example"}, "TIDEDESK_MAIL_LINK_URL"),
])
def test_mail_settings_refuse_what_cannot_work(tmp_path: object, env: dict[str, str],
                                               says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        load_settings(env=env, data_dir=str(tmp_path))


def test_mail_settings_fill_the_password_and_turn_mail_on(tmp_path: object) -> None:
    off = load_settings(env={}, data_dir=str(tmp_path))
    assert not off.mail_enabled and off.smtp_url is None
    on = load_settings(env={"TIDEDESK_SMTP_URL": "smtp://mailer@h:587?starttls=true",
                            "TIDEDESK_SMTP_PASSWORD": "p@ss",
                            "TIDEDESK_MAIL_FROM": "Shop <help@shop.example>"},
                       data_dir=str(tmp_path))
    assert on.mail_enabled
    assert parse_smtp_url(on.smtp_url or "").password == "p@ss"


def test_reply_tokens() -> None:
    token = sign_reply_token(SECRET, CONV, now=1000.0, ttl_s=60)
    assert len(f"help+{token}") <= 64  # fits the local part of an address
    assert verify_reply_token(SECRET, token, now=1059.0) is not None
    assert verify_reply_token(SECRET, token.upper(), now=1000.0) is not None  # lower-cased
    ok = verify_reply_token(SECRET, token, now=1000.0)
    assert ok is not None and ok.conversation_id == CONV
    cases = {
        "expired": (SECRET, token, 1061.0),
        "another key": ("t" * 40, token, 1000.0),
        "another conversation": (SECRET, "f" + token[1:], 1000.0),
        "a later expiry": (SECRET, token.replace(token.split(".")[1], "zzzzzz"), 1000.0),
        "garbage": (SECRET, "hello", 1000.0),
    }
    for name, (secret, candidate, now) in cases.items():
        assert verify_reply_token(secret, candidate, now) is None, name
    assert find_tokens(f"<td.reply.7.{token}@shop.example> <other@x>") == [token]


@given(st.text(alphabet="0123456789abcdef.z", max_size=80))
def test_no_made_up_string_verifies(candidate: str) -> None:
    assert verify_reply_token(SECRET, candidate, now=0.0) is None


def test_retry_schedule() -> None:
    policy = RetryPolicy(base_s=30, cap_s=3600, max_attempts=30)
    assert [policy.delay(n) for n in (1, 2, 3, 8, 29)] == [30, 60, 120, 3600, 3600]
    assert policy.next_try(1, now=100.0) == 130.0
    assert policy.next_try(30, now=100.0) is None
    total = sum(policy.delay(n) for n in range(1, 30))
    assert 20 * 3600 < total < 30 * 3600  # about a day of trying


@pytest.mark.parametrize(("name", "text", "kept"), [
    ("gmail", "Yes please.\n\nOn Tue, 1 Dec 2026 at 10:00, Shop <h@s.example> wrote:\n> Hi",
     "Yes please."),
    ("wrapped gmail header", "Sure\n\nOn Tue, 1 Dec 2026 at 10:00, Shop Support\n"
     "<h@s.example> wrote:\n> Hi", "Sure"),
    ("chinese client", "好的，谢谢\n\n在 2026年12月1日 10:00，客服 写道：\n> 您好", "好的，谢谢"),
    ("outlook", "Thanks\n\n-----Original Message-----\nFrom: Shop\nSent: Tuesday",
     "Thanks"),
    ("outlook headers", "Fine\n________________________________\nFrom: Shop\nSent: today",
     "Fine"),
    ("signature", "See you\n-- \nVera\nCEO", "See you"),
    ("trailing quote", "ok\n> old\n> older", "ok"),
    ("a from line in the text is kept", "From: me, with love\nbye", "From: me, with love\nbye"),
    ("crlf", "a\r\nb\r\n", "a\nb"),
])
def test_strip_reply(name: str, text: str, kept: str) -> None:
    assert strip_reply(text) == kept, name


def _mail(body: str = "hello", **headers: str) -> bytes:
    msg = EmailMessage()
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(body)
    return bytes(msg)


def test_read_reply_finds_the_token_and_the_text() -> None:
    token = sign_reply_token(SECRET, CONV, now=0.0)
    threaded = read_reply(_mail("Blue\n\nOn Mon, X wrote:\n> q", Message_ID="<m1@x>",
                                In_Reply_To=f"<td.reply.1.{token}@s.example>"), 4000)
    assert (threaded.message_id, threaded.tokens, threaded.text) == ("m1@x", (token,), "Blue")
    plus = read_reply(_mail("Red", To=f"Shop <help+{token}@s.example>"), 4000)
    assert plus.tokens == (token,)
    assert read_reply(_mail("x" * 50), 10).text == "x" * 9 + "…"


@pytest.mark.parametrize(("name", "raw", "reason"), [
    ("huge", b"X" * (1024 * 1024 + 1), "too_large"),
    ("html only", b"Content-Type: text/html\r\n\r\n<p>hi</p>", "no_text"),
    ("unknown charset", b"Content-Type: text/plain; charset=x-nope\r\n\r\n\xff\xfe",
     "bad_encoding"),
    ("auto reply", b"Auto-Submitted: auto-replied\r\n\r\nI am away", "auto_reply"),
    ("bulk", b"Precedence: bulk\r\n\r\nnews", "auto_reply"),
    ("only a quote", b"\r\n> old text\r\n", "empty"),
    ("not a mail", b"\x00\x01\x02", "empty"),
])
def test_read_reply_refuses(name: str, raw: bytes, reason: str) -> None:
    with pytest.raises(Refused) as err:
        read_reply(raw, 4000)
    assert err.value.reason == reason, name


@given(st.binary(max_size=2000))
def test_read_reply_never_crashes(raw: bytes) -> None:
    try:
        read_reply(raw, 4000)
    except Refused:
        pass


def test_compose_reply_and_transcript() -> None:
    token = sign_reply_token(SECRET, CONV, now=0.0)
    env = Envelope(from_name="Tide Shop", from_address="help@shop.example",
                   to="vera@example.com",
                   message_id=message_id("reply", 9, token, "help@shop.example"),
                   in_reply_to="old@shop.example", references=("older@x", "old@shop.example"),
                   reply_token=token)
    lines = [Line(sender="agent", name="Ann", body="<b>shipped</b>\nsoon", ts=0.0)]
    msg = reply_mail(env, shop="Tide Shop", locale="en", lines=lines,
                     link="https://s.example/#tidedesk=t", now=0.0)
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert parsed["Message-ID"] == f"<td.reply.9.{token}@shop.example>"
    assert parsed["In-Reply-To"] == "<old@shop.example>"
    assert parsed["References"] == "<older@x> <old@shop.example>"
    assert f"help+{token}@shop.example" in parsed["Reply-To"]
    assert parsed["Subject"] == "New reply from Tide Shop"
    assert isinstance(parsed, EmailMessage)
    plain = parsed.get_body(("plain",))
    rich = parsed.get_body(("html",))
    assert plain is not None and rich is not None
    assert "<b>shipped</b>" in plain.get_content() and "Ann" in plain.get_content()
    assert "&lt;b&gt;shipped&lt;/b&gt;" in rich.get_content()  # escaped in HTML
    assert 'href="https://s.example/#tidedesk=t"' in rich.get_content()
    zh = transcript_mail(env, shop="Tide Shop", locale="zh-CN",
                         lines=[Line(sender="visitor", name="", body="你好", ts=0.0)], now=0.0)
    assert zh["Subject"] == "您与 Tide Shop 的对话记录"
    zh_plain = zh.get_body(("plain",))
    assert zh_plain is not None and "您 (1970-01-01 00:00 UTC):" in zh_plain.get_content()


@pytest.mark.parametrize(("found", "used_at", "expires_at", "now", "why"), [
    pytest.param(False, None, 0.0, 10.0, "link_unknown", id="never issued or deleted"),
    pytest.param(True, 5.0, 100.0, 10.0, "link_used", id="clicked before"),
    pytest.param(True, 5.0, 100.0, 200.0, "link_used", id="used beats expired"),
    pytest.param(True, None, 100.0, 100.0, "link_expired", id="never used, too late"),
    pytest.param(True, None, 100.0, 50.0, "link_used", id="lost a race to another click"),
])
def test_mail_link_refusals(found: bool, used_at: float | None, expires_at: float, now: float,
                            why: str) -> None:
    assert refusal(found=found, used_at=used_at, expires_at=expires_at, now=now) == why


def test_mail_link_codes_go_in_the_fragment() -> None:
    codes = {new_link_code() for _ in range(50)}
    assert len(codes) == 50 and all(LINK_CODE_RE.fullmatch(c) for c in codes)
    assert mail_link("https://s.example/help#old", "abc") == "https://s.example/help#tidedesk-code=abc"

"""Settings: read once at start-up from ``TIDEDESK_*`` variables and an optional YAML file.

Precedence: override > environment variable > YAML file > default. Each key is declared once,
as an attribute of :class:`Settings` with its default, parser and doc; :data:`FIELDS` lists the
declarations and :func:`markdown_table` renders them as the README's table. Any key may be given
as ``TIDEDESK_<KEY>_FILE``, a file holding the value (Docker and Nomad secrets); setting both is
an error. A bad value raises :class:`SettingsError` naming the key and what is allowed.
Nothing here is read at import time; call :func:`load_settings`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

ENV_PREFIX = "TIDEDESK_"
FILE_SUFFIX = "_FILE"
# The commands that join a cluster: they must share its keys, never mint their own.
CLUSTER_ROLES = ("chatnode", "router")
_UNSET: Any = object()  # not given by this source; the next one is asked


class SettingsError(ValueError):
    """A setting is missing or has a value that is not allowed; the message names the key."""


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _parse_int(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(key: str, raw: Any) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(
                f"{_env_name(key)}: expected an integer between {lo} and {hi}, got {raw!r}"
            ) from None
        if not lo <= value <= hi:
            raise SettingsError(f"{_env_name(key)}: must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _parse_float(lo: float, hi: float) -> Callable[[str, Any], float]:
    def parse(key: str, raw: Any) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SettingsError(
                f"{_env_name(key)}: expected a number between {lo} and {hi}, got {raw!r}"
            ) from None
        if not lo <= value <= hi:
            raise SettingsError(f"{_env_name(key)}: must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _parse_str(key: str, raw: Any) -> str:
    if not isinstance(raw, str | int | float):
        raise SettingsError(f"{_env_name(key)}: expected a string, got {raw!r}")
    return str(raw).strip()


def _parse_optional_str(key: str, raw: Any) -> str | None:
    value = _parse_str(key, raw)
    return value or None


def _parse_list(key: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, list | tuple):
        return tuple(str(x).strip() for x in raw if str(x).strip())
    if isinstance(raw, str):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    raise SettingsError(f"{_env_name(key)}: expected a comma-separated list, got {raw!r}")


def _parse_networks(key: str, raw: Any) -> tuple[str, ...]:
    import ipaddress

    items = _parse_list(key, raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(f"{_env_name(key)}: {item!r} is not a network in CIDR form "
                                "(like 10.0.0.0/8)") from None
    return items


def _parse_bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{_env_name(key)}: expected true or false, got {raw!r}")


def _parse_choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, raw: Any) -> str:
        value = str(raw).strip()
        if value not in choices:
            raise SettingsError(
                f"{_env_name(key)}: must be one of {', '.join(choices)}, got {raw!r}"
            )
        return value

    return parse


@dataclasses.dataclass(frozen=True)
class Field:
    """One key's declaration: its default, parser and doc (``shown``: README default, if computed).

    ``key`` is the :class:`Settings` attribute; it is filled in from there by :data:`FIELDS`."""

    default: Any
    parse: Callable[[str, Any], Any]
    doc: str
    shown: str | None = None
    key: str = ""

    @property
    def env(self) -> str:
        return _env_name(self.key)

    def shown_default(self) -> str:
        """The default as the README's table shows it."""
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return "unset"
        if self.default == ():
            return "empty"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        return f"`{self.default}`"


def _key(default: Any, parse: Callable[[str, Any], Any], doc: str, shown: str | None = None
         ) -> Any:
    """Declare a setting: the dataclass field carries its :class:`Field` as metadata."""
    return dataclasses.field(metadata={"setting": Field(default, parse, doc, shown)})


# The demo admin's password: public (README), so only ever on loopback (tidedesk/runtime.py).
DEMO_PASSWORD = "tidedesk-demo"

_KEYS_SHOWN = ("generated into `data_dir` by `tidedesk dev`; `chatnode` and `router` refuse "
               "to start without it")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The frozen settings of one process; each attribute is one ``TIDEDESK_<KEY>``, declared once.

    The declarations are the README's settings table (``tidedesk settings``).
    Passwords are already filled into the URLs; the two keys are never ``None``."""

    host: str = _key("127.0.0.1", _parse_str, "address the HTTP server binds to")
    port: int = _key(8080, _parse_int(0, 65535), "HTTP port (0 = any free port)")
    data_dir: str = _key("var", _parse_str, "embedded mode's SQLite file and generated keys")
    database_url: tuple[str, ...] = _key(
        None, _parse_list, "history database(s), `mysql://user:pass@host/db`; a "
        "comma-separated list = shards", shown="SQLite in `data_dir`")
    database_password: str | None = _key(
        None, _parse_optional_str, "put into every `TIDEDESK_DATABASE_URL` that names a user but "
        "no password, so URLs carry no secret (normally as `TIDEDESK_DATABASE_PASSWORD_FILE`)")
    db_pool_size: int = _key(4, _parse_int(1, 64), "connections per database (2-3x cores)")
    broker_url: str | None = _key(None, _parse_optional_str,
                                  "`amqp://…` RabbitMQ; unset = in-process broker")
    broker_password: str | None = _key(
        None, _parse_optional_str, "put into `TIDEDESK_BROKER_URL` when it names a user but no "
        "password")
    redis_url: str | None = _key(None, _parse_optional_str,
                                 "`redis://…`; unset = in-process store")
    redis_password: str | None = _key(
        None, _parse_optional_str, "put into `TIDEDESK_REDIS_URL` when it names a user but no "
        "password")
    redis_prefix: str = _key("tidedesk:", _parse_str, "prefix of every Redis key (shared servers)")
    node_id: str = _key("", _parse_str, "this node's id", shown="hostname-pid")
    jwt_secret: str = _key(None, _parse_optional_str,
                           "HMAC key for agent and visitor tokens (at least 32 characters)",
                           shown=_KEYS_SHOWN)
    aes_key: str = _key(None, _parse_optional_str,
                        "base64 of 32 bytes, the AES-256-GCM key for visitor fields and bodies",
                        shown=_KEYS_SHOWN)
    aes_previous_keys: tuple[str, ...] = _key(
        (), _parse_list, "older AES keys (base64, comma-separated) still read until "
        "`tidedesk admin rotate-key` has re-encrypted everything")
    encrypt_message_bodies: bool = _key(
        False, _parse_bool, "encrypt message bodies at rest too (visitor name, e-mail, phone "
        "always are)")
    identity_secret: str | None = _key(
        None, _parse_optional_str,
        "the shop's secret for identify (issue 14): a visitor created with `customer_id` and "
        "`customer_hash` = hex HMAC-SHA256 of the id under this secret is that customer's "
        "contact on every device; unset = identify refused", shown="unset")
    login_lock_after: int = _key(
        10, _parse_int(1, 1000),
        "failed sign-ins to one account from one address before that pair is locked (growing "
        "delays before that; the owner's other addresses are not locked)")
    login_lock_s: int = _key(900, _parse_int(1, 86400),
                             "how long a locked account (for one source) or source stays locked")
    login_source_lock_after: int = _key(
        50, _parse_int(1, 100000), "failed sign-ins from one address (any accounts) before that "
        "address is locked out of sign-in")
    admin_require_2fa: bool = _key(
        True, _parse_bool, "admins must have two-factor sign-in on to change roles or settings")
    rate_limit_ip_per_min: int = _key(
        1200, _parse_int(0, 10_000_000), "REST requests + WebSocket connects per client address "
        "per minute (429, close 4429; 0 = no limit)")
    rate_limit_token_per_min: int = _key(
        600, _parse_int(0, 10_000_000), "REST requests + WebSocket connects per signed-in agent "
        "or visitor per minute (0 = no limit)")
    allowed_origins: tuple[str, ...] = _key(
        (), _parse_list, "sites allowed to open WebSockets (scheme://host[:port], "
        "comma-separated); empty = same host only")
    public_hosts: tuple[str, ...] = _key(
        (), _parse_list, "host names this desk answers to (the `Host` header, comma-separated; "
        "others get 400); empty = any (embedded, loopback). Loopback names always pass")
    retention_days: int = _key(
        0, _parse_int(0, 36500), "closed conversations older than this many days are deleted "
        "(messages in every shard too) by an hourly job on the routers; 0 = kept for ever")
    webhook_allowed_networks: tuple[str, ...] = _key(
        (), _parse_networks, "CIDRs webhooks may reach although they are not public (loopback, "
        "private, link-local); empty = public addresses only")
    webhook_per_url_concurrency: int = _key(
        4, _parse_int(1, 100), "webhook POSTs in flight at once to one receiver (host:port)")
    routing_file: str | None = _key(None, _parse_optional_str,
                                    "routing rules YAML (unset = built-in rules)")
    demo_agent_email: str = _key("demo@tidedesk.local", _parse_str, "embedded mode's demo agent")
    demo_agent_password: str = _key(
        DEMO_PASSWORD, _parse_str, "embedded mode's demo agent (bound to anything but loopback, "
        "`tidedesk dev` refuses to start with this default)")
    access_token_ttl_s: int = _key(900, _parse_int(60, 86400), "agent access token lifetime")
    refresh_token_ttl_s: int = _key(7 * 86400, _parse_int(300, 90 * 86400),
                                    "refresh token lifetime")
    visitor_token_ttl_s: int = _key(30 * 86400, _parse_int(60, 365 * 86400),
                                    "visitor token lifetime (then the widget starts a new visitor)")
    presence_ttl_s: float = _key(
        90.0, _parse_float(3, 3600), "a connection counts as present this long after its node's "
        "last heartbeat (heartbeat every third of it)")
    ws_ping_interval_s: float = _key(20.0, _parse_float(0, 3600),
                                     "Tornado's WebSocket ping interval (0 = off)")
    ws_ping_timeout_s: float = _key(20.0, _parse_float(1, 3600),
                                    "close after this long without pong (at most the interval)")
    ws_max_message_size: int = _key(65536, _parse_int(1024, 16 * 1024 * 1024),
                                    "largest WebSocket frame accepted, in bytes")
    max_body_chars: int = _key(4000, _parse_int(1, 100000), "longest chat message body")
    rate_limit_per_10s: int = _key(
        30, _parse_int(1, 10000), "frames a visitor connection may send per 10 s, agents 4x "
        "(they resume many chats; then close 4429)")
    ack_timeout_s: float = _key(10.0, _parse_float(0.1, 300),
                                "give up waiting for a broker confirm")
    startup_wait_s: float = _key(
        300.0, _parse_float(0, 86400), "how long a chat node or router waits at start-up for DNS "
        "and its backends (jittered back-off, JSON logs) before it exits 1 (issue 19)")
    max_waiting_per_pool: int = _key(
        500, _parse_int(1, 1000000), "visitors waiting in one pool before new ones get the busy "
        "answer")
    # issue 13: the conversation lifecycle
    agent_grace_s: float = _key(
        30.0, _parse_float(0, 86400), "an agent whose consoles are all gone this long (a "
        "network blip is shorter) gives their open chats back; signing out or setting "
        "`offline` gives them back at once; for a chat node that died, it counts from when "
        "its heartbeat lapsed (`TIDEDESK_PRESENCE_TTL_S` after the last one)")
    idle_close_s: float = _key(
        1800.0, _parse_float(10, 30 * 86400), "a queued or assigned chat whose visitor has "
        "no socket left and that saw nothing happen this long closes itself")
    attachments_url: str | None = _key(
        None, _parse_optional_str, "where attachment bytes live: `file:///dir` (a directory or "
        "volume), `s3://KEY@host:port/bucket/prefix?secure=false` (S3, MinIO, Ceph RGW) or "
        "`database` (the history databases, sharded like history: the Swarm stack's default)",
        shown="the directory `attachments` in `data_dir`")
    attachments_s3_secret: str | None = _key(
        None, _parse_optional_str, "put into an `s3://` `TIDEDESK_ATTACHMENTS_URL` that names an "
        "access key but no secret")
    attachment_max_bytes: int = _key(10 * 1024 * 1024, _parse_int(1, 2**40),
                                     "largest upload, in bytes (413 above it)")
    attachment_types: tuple[str, ...] = _key(
        ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain",
         "application/zip"), _parse_list,
        "the file types allowed (as told by their bytes, not their name; 415 otherwise)",
        shown="PNG, JPEG, GIF, WebP images, PDF, plain text, ZIP")
    attachment_upload_timeout_s: float = _key(
        60.0, _parse_float(1, 3600), "an upload whose body has not all arrived by then is "
        "refused (408) and nothing is kept")
    attachment_link_ttl_s: int = _key(300, _parse_int(10, 3600),
                                      "how long a signed attachment link (for `<img>`) works")
    attachment_max_pixels: int = _key(
        40_000_000, _parse_int(1000, 500_000_000), "images with more pixels are refused "
        "(decompression bombs; Pillow's MAX_IMAGE_PIXELS)")
    envelope_format: str = _key(
        "binary", _parse_choice("binary", "binary-v2", "binary-v1", "json"),
        "what this node writes to the broker: `binary` (one delivery per chat node for the "
        "recipients of a message there; what one pass of the event loop publishes to a queue "
        "goes as one AMQP message, a broker batch), "
        "`binary-v2` (no broker batches) only while upgrading from a version before them, "
        "`binary-v1` (one delivery per recipient) only while upgrading from a version before "
        "grouped deliveries, `json` only while upgrading from one before binary envelopes "
        "([docs/envelopes.md](docs/envelopes.md)); all are always read")
    smtp_url: str | None = _key(
        None, _parse_optional_str, "outgoing mail: `smtp://user:pass@host:port` (add "
        "`?starttls=true` for STARTTLS) or `smtps://…`; unset = no mail, and the widget promises "
        "none ([Configure mail](#configure-mail))")
    smtp_password: str | None = _key(
        None, _parse_optional_str, "put into `TIDEDESK_SMTP_URL` when it names a user but no "
        "password")
    mail_from: str | None = _key(
        None, _parse_optional_str, "sender of every mail, `Shop <help@shop.example>`; replies to "
        "it (plus-addressed) come back through `TIDEDESK_IMAP_URL`; needed with "
        "`TIDEDESK_SMTP_URL`")
    imap_url: str | None = _key(
        None, _parse_optional_str, "the mailbox whose replies become visitor messages: "
        "`imap://user:pass@host/MAILBOX` or `imaps://…` (unset = mail replies are not read)")
    imap_password: str | None = _key(
        None, _parse_optional_str, "put into `TIDEDESK_IMAP_URL` when it names a user but no "
        "password")
    mail_link_url: str | None = _key(
        None, _parse_optional_str, "the page a mail's link opens (one with the widget); the "
        "widget reopens the chat from the link's one-time `#tidedesk-code=` (once, within 7 "
        "days)",
        shown="`http://<host>:<port>/demo`")
    mail_reply_delay_s: float = _key(
        60.0, _parse_float(0, 110), "an agent reply to an absent visitor waits this long for "
        "more replies to share its mail (the protocol promises the mail within two minutes)")
    mail_poll_s: float = _key(5.0, _parse_float(0.05, 60),
                              "how often the mail outbox is looked at")
    imap_poll_s: float = _key(15.0, _parse_float(0.05, 3600),
                              "how often the IMAP mailbox is read for replies")
    event_loop: str = _key(
        "auto", _parse_choice("auto", "asyncio", "uvloop"), "the asyncio event loop of chat "
        "nodes, routers and the embedded server: `auto` = uvloop when it is installed, else "
        "asyncio's own ([docs/bench.md](docs/bench.md), issue 17)")
    log_level: str = _key("INFO", _parse_choice("DEBUG", "INFO", "WARNING", "ERROR"),
                          "log level")
    log_format: str = _key(
        "json", _parse_choice("json", "text"), "JSON lines (with `node_id`, `request_id`, "
        "`conversation_id`: [docs/observability.md](docs/observability.md)) or plain text")

    @property
    def embedded(self) -> bool:
        return self.broker_url is None and self.redis_url is None

    @property
    def mail_enabled(self) -> bool:
        """Whether visitors can be promised an answer by e-mail (an SMTP server is set)."""
        return self.smtp_url is not None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Every setting, in declaration order, with its key filled in from the Settings attribute.
FIELDS: tuple[Field, ...] = tuple(
    dataclasses.replace(f.metadata["setting"], key=f.name) for f in dataclasses.fields(Settings))
_BY_KEY = {f.key: f for f in FIELDS}


def markdown_table() -> str:
    """The README's settings table: one row per key, from the declarations above."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{f.env}` | {f.shown_default()} | {f.doc} |" for f in FIELDS]
    return "\n".join(rows) + "\n"


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"--config {path}: cannot read the file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path}: expected a mapping of setting: value")
    unknown = sorted(set(map(str, data)) - set(_BY_KEY))
    if unknown:
        raise SettingsError(
            f"--config {path}: unknown setting(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_BY_KEY))}"
        )
    return {str(k): v for k, v in data.items()}


def _from_env(field: Field, env: Mapping[str, str]) -> Any:
    """``TIDEDESK_<KEY>``, or the content of the file ``TIDEDESK_<KEY>_FILE`` names (the
    Docker and Nomad secrets convention; trailing newline stripped), else :data:`_UNSET`."""
    file_var = field.env + FILE_SUFFIX
    if file_var not in env:
        return env.get(field.env, _UNSET)
    if field.env in env:
        raise SettingsError(f"{file_var}: {field.env} is set too; set one of them")
    path = env[file_var]
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{file_var}: cannot read {path} ({exc.strerror or exc}); is the "
                            "secret mounted?") from None


def _with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` (URL-quoted) when it names a user but has no password."""
    parts = urlsplit(url)
    if password is None or "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    if ":" in userinfo:  # the URL has its own password
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{quote(password, safe='')}@{host}"))


def _generated_secret(data_dir: str, name: str, make: Callable[[], str]) -> str:
    """A secret kept in data_dir so tokens survive a restart of the embedded server."""
    path = Path(data_dir) / name
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        # Created 0700 / 0600 from the start (no chmod afterwards: no moment where another
        # user could open the key).
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        value = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(value)
        return value


def _cluster_like(values: dict[str, Any]) -> bool:
    """Settings naming shared servers: keys minted here would not be the cluster's."""
    return bool(values["broker_url"] or values["redis_url"]) or any(
        not url.startswith("sqlite://") for url in values["database_url"])


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    *,
    role: str | None = None,
    **overrides: Any,
) -> Settings:
    """Build the frozen settings. ``env`` defaults to ``os.environ``; ``overrides`` win over all.

    ``role`` is the command being started: a cluster role (``chatnode``, ``router``) needs
    the shared keys and refuses to start without them; any other command generates missing
    keys into ``data_dir`` (embedded mode)."""
    env = os.environ if env is None else env
    file_values = _read_yaml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for field in FIELDS:
        raw = overrides[field.key] if field.key in overrides else _from_env(field, env)
        if raw is _UNSET:
            raw = file_values.get(field.key, _UNSET)
        if raw is _UNSET:
            values[field.key] = field.default
            continue
        values[field.key] = None if raw is None else field.parse(field.key, raw)
    known = {f.env for f in FIELDS} | {f.env + FILE_SUFFIX for f in FIELDS}
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise SettingsError(
            f"unknown environment variable(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(_env_name(k) for k in sorted(_BY_KEY))} "
            f"(each also as {ENV_PREFIX}<KEY>{FILE_SUFFIX}: a file holding the value)"
        )
    _check_urls(values)
    _check_mail(values)
    _check_role(values, role)
    # `tidedesk admin` / `migrate` against a cluster's servers mint no keys into data_dir: admin
    # needs the cluster's keys (it encrypts and decrypts what the nodes read), and migrate uses
    # none, so it gets throw-away ones that never reach the disk.
    in_memory_keys = False
    if role in ("admin", "migrate") and _cluster_like(values):
        missing = [_BY_KEY[k].env for k in ("jwt_secret", "aes_key") if values[k] is None]
        if missing and role == "admin":
            raise SettingsError(
                f"tidedesk admin against a cluster's servers needs {' and '.join(missing)} (or "
                f"{' / '.join(m + FILE_SUFFIX for m in missing)}), the cluster's own: a key made "
                "here would encrypt what no chat node can read")
        in_memory_keys = True
    if not values["node_id"]:
        values["node_id"] = f"{socket.gethostname()}-{os.getpid()}"
    if values["jwt_secret"] is None and in_memory_keys:
        values["jwt_secret"] = secrets.token_urlsafe(48)
    if values["jwt_secret"] is None:
        values["jwt_secret"] = _generated_secret(
            values["data_dir"], "jwt.key", lambda: secrets.token_urlsafe(48)
        )
    if len(values["jwt_secret"]) < 32:
        raise SettingsError("TIDEDESK_JWT_SECRET: use at least 32 characters (HS256 needs a "
                            "256-bit key), e.g. the output of: openssl rand -hex 32")
    if values["aes_key"] is None and in_memory_keys:
        values["aes_key"] = base64.b64encode(os.urandom(32)).decode()
    if values["aes_key"] is None:
        values["aes_key"] = _generated_secret(
            values["data_dir"], "aes.key", lambda: base64.b64encode(os.urandom(32)).decode()
        )
    _check_aes_key("aes_key", values["aes_key"])
    for old in values["aes_previous_keys"]:
        _check_aes_key("aes_previous_keys", old)
    if 0 < values["ws_ping_interval_s"] < values["ws_ping_timeout_s"]:
        raise SettingsError(
            f"TIDEDESK_WS_PING_TIMEOUT_S: {values['ws_ping_timeout_s']} is longer than "
            f"TIDEDESK_WS_PING_INTERVAL_S ({values['ws_ping_interval_s']}); Tornado allows at "
            "most the interval")
    return Settings(**values)


def _check_urls(values: dict[str, Any]) -> None:
    """Fill the passwords into the URLs, then check the schemes (``values`` is changed)."""
    if not values["database_url"]:
        values["database_url"] = (f"sqlite:///{Path(values['data_dir']) / 'tidedesk.sqlite3'}",)
    values["database_url"] = tuple(_with_password(url, values["database_password"])
                                   for url in values["database_url"])
    for url in values["database_url"]:
        if not url.startswith(("sqlite://", "mysql://", "mysql+pool://")):
            raise SettingsError(
                f"TIDEDESK_DATABASE_URL: {url!r} is not a sqlite:// or mysql:// URL"
            )
    for name, schemes in (("broker", ("amqp://", "amqps://")), ("redis", ("redis://", "rediss://"))):
        url = values[f"{name}_url"]
        if url is None:
            continue
        if not url.startswith(schemes):
            raise SettingsError(f"TIDEDESK_{name.upper()}_URL: expected {schemes[0]}..., got "
                                f"{url!r}")
        values[f"{name}_url"] = _with_password(url, values[f"{name}_password"])
    url = values["attachments_url"]
    if url is not None:
        if url != "database" and not url.startswith(("file:///", "s3://")):
            raise SettingsError(f"TIDEDESK_ATTACHMENTS_URL: expected file:///dir, s3://... or "
                                f"database, got {url!r}")
        values["attachments_url"] = _with_password(url, values["attachments_s3_secret"])


def _check_mail(values: dict[str, Any]) -> None:
    """The mail settings: URLs that parse, a sender with an SMTP server, IMAP only with SMTP
    (replies are threaded by the tokens of the mails sent). ``values`` is changed."""
    from tidedesk.mail.addresses import (
        MailUrlError,
        parse_from_address,
        parse_imap_url,
        parse_smtp_url,
    )

    checks = (("smtp_url", parse_smtp_url), ("imap_url", parse_imap_url))
    for key, parse in checks:
        if values[key] is None:
            continue
        password_key = key.replace("_url", "_password")
        values[key] = _with_password(values[key], values[password_key])
        try:
            parse(values[key])
        except MailUrlError as exc:
            raise SettingsError(f"{_env_name(key)}: {exc}") from None
    if values["smtp_url"] is not None and values["mail_from"] is None:
        raise SettingsError("TIDEDESK_MAIL_FROM: needed with TIDEDESK_SMTP_URL, e.g. "
                            "'Shop support <help@shop.example>'")
    if values["mail_from"] is not None:
        try:
            parse_from_address(values["mail_from"])
        except MailUrlError as exc:
            raise SettingsError(f"TIDEDESK_MAIL_FROM: {exc}") from None
    if values["imap_url"] is not None and values["smtp_url"] is None:
        raise SettingsError("TIDEDESK_IMAP_URL needs TIDEDESK_SMTP_URL too: replies are matched "
                            "to chats by the tokens of the mails Tidedesk sends")
    link = values["mail_link_url"]
    if link is not None and not link.startswith(("http://", "https://")):
        raise SettingsError(f"TIDEDESK_MAIL_LINK_URL: expected an http:// or https:// page, "
                            f"got {link!r}")


def _check_role(values: dict[str, Any], role: str | None) -> None:
    """A cluster role needs the cluster's URLs and keys: a key it minted itself would refuse
    every other node's tokens and could not read what they encrypted."""
    if role not in CLUSTER_ROLES:
        return
    if role == "chatnode" and values["broker_url"] is None and values["redis_url"] is None:
        raise SettingsError("tidedesk chatnode needs TIDEDESK_BROKER_URL and "
                            "TIDEDESK_REDIS_URL (use 'tidedesk dev' for one process)")
    missing = [_BY_KEY[k].env for k in ("jwt_secret", "aes_key") if values[k] is None]
    if missing:
        files = " / ".join(name + FILE_SUFFIX for name in missing)
        raise SettingsError(
            f"tidedesk {role} needs {' and '.join(missing)} (or {files}), the same on every "
            "chat node and router; only 'tidedesk dev' generates keys. Make them once, e.g. "
            "openssl rand -hex 32 (TIDEDESK_JWT_SECRET) and head -c 32 /dev/urandom | base64 "
            "(TIDEDESK_AES_KEY)")


def _check_aes_key(key: str, value: str) -> None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SettingsError(f"{_env_name(key)}: expected base64 of exactly 32 bytes (AES-256), "
                            "e.g. the output of: head -c 32 /dev/urandom | base64")

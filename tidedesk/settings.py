"""Settings: read once at start-up from ``TIDEDESK_*`` variables and an optional YAML file.

Precedence: environment variable > YAML file > default. Every key is documented in
``FIELDS``; a bad value raises :class:`SettingsError` naming the key and what is allowed.
Nothing here is read at import time; call :func:`load_settings`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "TIDEDESK_"


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
    key: str
    default: Any
    parse: Callable[[str, Any], Any]
    doc: str


# Every setting, its default and what it means. The README's configuration table mirrors this.
FIELDS: tuple[Field, ...] = (
    Field("host", "127.0.0.1", _parse_str, "address the HTTP server binds to"),
    Field("port", 8080, _parse_int(0, 65535), "HTTP port (0 = any free port)"),
    Field("data_dir", "var", _parse_str, "where embedded mode keeps SQLite and generated keys"),
    Field("database_url", None, _parse_list,
          "history database(s); comma-separated list = shards. Default: SQLite in data_dir"),
    Field("db_pool_size", 4, _parse_int(1, 64), "connections per database (2-3x cores)"),
    Field("broker_url", None, _parse_optional_str, "amqp:// URL; unset = in-process broker"),
    Field("redis_url", None, _parse_optional_str, "redis:// URL; unset = in-process store"),
    Field("redis_prefix", "tidedesk:", _parse_str, "prefix of every Redis key (shared servers)"),
    Field("node_id", "", _parse_str, "this chat node's id (default: hostname-pid)"),
    Field("jwt_secret", None, _parse_optional_str,
          "HMAC key for agent and visitor tokens (default: generated into data_dir)"),
    Field("aes_key", None, _parse_optional_str,
          "base64 of 32 bytes, AES-256-GCM key for visitor fields and bodies (default: "
          "generated into data_dir; in Docker TIDEDESK_AES_KEY_FILE=/run/secrets/... via the "
          "image's entrypoint)"),
    Field("aes_previous_keys", (), _parse_list,
          "older AES keys (base64, comma-separated) still accepted for reading until "
          "'tidedesk admin rotate-key' has re-encrypted everything"),
    Field("encrypt_message_bodies", False, _parse_bool,
          "also encrypt chat message bodies at rest (AES-256-GCM)"),
    Field("login_lock_after", 10, _parse_int(1, 1000),
          "failed sign-ins to one account before it is locked (growing delays before that)"),
    Field("login_lock_s", 900, _parse_int(1, 86400), "how long a locked account stays locked"),
    Field("rate_limit_ip_per_min", 1200, _parse_int(0, 10_000_000),
          "REST requests + WebSocket connects per client address per minute (0 = no limit)"),
    Field("rate_limit_token_per_min", 600, _parse_int(0, 10_000_000),
          "REST requests + WebSocket connects per signed-in agent or visitor per minute "
          "(0 = no limit)"),
    Field("allowed_origins", (), _parse_list,
          "sites allowed to open WebSockets (scheme://host[:port]); empty = same host only"),
    Field("routing_file", None, _parse_optional_str, "routing rules YAML (default: built in)"),
    Field("demo_agent_email", "demo@tidedesk.local", _parse_str, "embedded mode's demo agent"),
    Field("demo_agent_password", "tidedesk-demo", _parse_str, "embedded mode's demo agent"),
    Field("access_token_ttl_s", 900, _parse_int(60, 86400), "agent access token lifetime"),
    Field("refresh_token_ttl_s", 7 * 86400, _parse_int(300, 90 * 86400), "refresh token life"),
    Field("visitor_token_ttl_s", 30 * 86400, _parse_int(60, 365 * 86400),
          "visitor token lifetime (then the widget starts a new visitor)"),
    Field("presence_ttl_s", 90.0, _parse_float(3, 3600),
          "a connection counts as present this long after its node's last heartbeat "
          "(heartbeat every third of it)"),
    Field("ws_ping_interval_s", 20.0, _parse_float(0, 3600), "WebSocket ping interval (0=off)"),
    Field("ws_ping_timeout_s", 20.0, _parse_float(1, 3600),
          "close after this long without pong (at most the ping interval)"),
    Field("ws_max_message_size", 65536, _parse_int(1024, 16 * 1024 * 1024),
          "largest WebSocket frame accepted, in bytes"),
    Field("max_body_chars", 4000, _parse_int(1, 100000), "longest chat message body"),
    Field("rate_limit_per_10s", 30, _parse_int(1, 10000),
          "frames a visitor connection may send per 10 s (agents: 4x, they resume many chats)"),
    Field("ack_timeout_s", 10.0, _parse_float(0.1, 300), "give up waiting for a broker confirm"),
    Field("max_waiting_per_pool", 500, _parse_int(1, 1000000),
          "visitors waiting in one pool before new ones get the busy answer"),
    Field("envelope_format", "binary", _parse_choice("binary", "json"),
          "what this node writes to the broker: binary v1, or json for a rolling upgrade from "
          "a version before binary envelopes (docs/envelopes.md); both are always read"),
    Field("log_level", "INFO", _parse_choice("DEBUG", "INFO", "WARNING", "ERROR"), "log level"),
    Field("log_format", "json", _parse_choice("json", "text"), "JSON lines or plain text"),
)

_BY_KEY = {f.key: f for f in FIELDS}


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str
    port: int
    data_dir: str
    database_url: tuple[str, ...]
    db_pool_size: int
    broker_url: str | None
    redis_url: str | None
    redis_prefix: str
    node_id: str
    jwt_secret: str
    aes_key: str
    aes_previous_keys: tuple[str, ...]
    encrypt_message_bodies: bool
    login_lock_after: int
    login_lock_s: int
    rate_limit_ip_per_min: int
    rate_limit_token_per_min: int
    allowed_origins: tuple[str, ...]
    routing_file: str | None
    demo_agent_email: str
    demo_agent_password: str
    access_token_ttl_s: int
    refresh_token_ttl_s: int
    visitor_token_ttl_s: int
    presence_ttl_s: float
    ws_ping_interval_s: float
    ws_ping_timeout_s: float
    ws_max_message_size: int
    max_body_chars: int
    rate_limit_per_10s: int
    ack_timeout_s: float
    max_waiting_per_pool: int
    envelope_format: str
    log_level: str
    log_format: str

    @property
    def embedded(self) -> bool:
        return self.broker_url is None and self.redis_url is None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


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


def _generated_secret(data_dir: str, name: str, make: Callable[[], str]) -> str:
    """A secret kept in data_dir so tokens survive a restart of the embedded server."""
    path = Path(data_dir) / name
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        value = make()
        path.write_text(value, encoding="ascii")
        path.chmod(0o600)
        return value


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    **overrides: Any,
) -> Settings:
    """Build the frozen settings. ``env`` defaults to ``os.environ``; ``overrides`` win over all."""
    env = os.environ if env is None else env
    file_values = _read_yaml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for field in FIELDS:
        raw: Any
        if field.key in overrides:
            raw = overrides[field.key]
        elif _env_name(field.key) in env:
            raw = env[_env_name(field.key)]
        elif field.key in file_values:
            raw = file_values[field.key]
        else:
            values[field.key] = field.default
            continue
        values[field.key] = None if raw is None else field.parse(field.key, raw)
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower()
                     not in _BY_KEY)
    if unknown:
        raise SettingsError(
            f"unknown environment variable(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(_env_name(k) for k in sorted(_BY_KEY))}"
        )
    if not values["database_url"]:
        values["database_url"] = (f"sqlite:///{Path(values['data_dir']) / 'tidedesk.sqlite3'}",)
    for url in values["database_url"]:
        if not url.startswith(("sqlite://", "mysql://", "mysql+pool://")):
            raise SettingsError(
                f"TIDEDESK_DATABASE_URL: {url!r} is not a sqlite:// or mysql:// URL"
            )
    if values["broker_url"] and not values["broker_url"].startswith(("amqp://", "amqps://")):
        raise SettingsError(
            f"TIDEDESK_BROKER_URL: expected amqp://..., got {values['broker_url']!r}")
    if values["redis_url"] and not values["redis_url"].startswith(("redis://", "rediss://")):
        raise SettingsError(
            f"TIDEDESK_REDIS_URL: expected redis://..., got {values['redis_url']!r}")
    if not values["node_id"]:
        values["node_id"] = f"{socket.gethostname()}-{os.getpid()}"
    if values["jwt_secret"] is None:
        values["jwt_secret"] = _generated_secret(
            values["data_dir"], "jwt.key", lambda: secrets.token_urlsafe(48)
        )
    if len(values["jwt_secret"]) < 32:
        raise SettingsError("TIDEDESK_JWT_SECRET: use at least 32 characters (HS256 needs a "
                            "256-bit key), e.g. the output of: openssl rand -hex 32")
    if values["aes_key"] is None:
        import base64

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


def _check_aes_key(key: str, value: str) -> None:
    import base64
    import binascii

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SettingsError(f"{_env_name(key)}: expected base64 of exactly 32 bytes (AES-256), "
                            "e.g. the output of: head -c 32 /dev/urandom | base64")

"""Settings: env > YAML > defaults, frozen, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tidedesk.settings import SettingsError, load_settings


def test_defaults_and_generated_secrets_survive_restart(tmp_path: Path) -> None:
    a = load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path)})
    b = load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path)})
    assert a.port == 8080 and a.embedded
    assert a.jwt_secret == b.jwt_secret and a.aes_key == b.aes_key
    assert a.database_url == (f"sqlite:///{tmp_path}/tidedesk.sqlite3",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 1  # type: ignore[misc]


def test_env_beats_yaml_beats_default(tmp_path: Path) -> None:
    cfg = tmp_path / "tidedesk.yml"
    cfg.write_text("port: 9000\nmax_body_chars: 100\ndata_dir: " + str(tmp_path) + "\n")
    s = load_settings(env={"TIDEDESK_PORT": "9100"}, config_file=str(cfg))
    assert (s.port, s.max_body_chars) == (9100, 100)


def test_database_url_list_means_shards(tmp_path: Path) -> None:
    s = load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path), "TIDEDESK_DATABASE_URL":
                           "mysql://root@127.0.0.1/a, mysql://root@127.0.0.1/b"})
    assert s.database_url == ("mysql://root@127.0.0.1/a", "mysql://root@127.0.0.1/b")


@pytest.mark.parametrize(("env", "message"), [
    ({"TIDEDESK_PORT": "eighty"}, "TIDEDESK_PORT: expected an integer"),
    ({"TIDEDESK_PORT": "70000"}, "TIDEDESK_PORT: must be between"),
    ({"TIDEDESK_LOG_LEVEL": "LOUD"}, "TIDEDESK_LOG_LEVEL: must be one of"),
    ({"TIDEDESK_ENVELOPE_FORMAT": "protobuf"},
     "TIDEDESK_ENVELOPE_FORMAT: must be one of binary, json"),
    ({"TIDEDESK_BROKER_URL": "http://x"}, "TIDEDESK_BROKER_URL: expected amqp"),
    ({"TIDEDESK_REDIS_URL": "x"}, "TIDEDESK_REDIS_URL: expected redis"),
    ({"TIDEDESK_DATABASE_URL": "postgres://x"}, "TIDEDESK_DATABASE_URL"),
    ({"TIDEDESK_AES_KEY": "c2hvcnQ="}, "TIDEDESK_AES_KEY: expected base64 of exactly 32"),
    ({"TIDEDESK_PROT": "8080"}, "unknown environment variable.*TIDEDESK_PROT"),
    ({"TIDEDESK_WS_PING_TIMEOUT_S": "60"}, "TIDEDESK_WS_PING_TIMEOUT_S: 60.0 is longer"),
], ids=["port-word", "port-range", "log-level", "envelope-format", "broker", "redis", "database",
        "aes", "typo", "ping-timeout"])
def test_bad_values_name_the_key(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path), **env})


@pytest.mark.parametrize(("text", "message"), [
    ("port: [1, 2]\n", "TIDEDESK_PORT"),
    ("- just a list\n", "expected a mapping"),
    ("colour: red\n", "unknown setting.*colour"),
    ("port: 80: 80\n", "not valid YAML"),
], ids=["bad-value", "not-mapping", "unknown-key", "broken-yaml"])
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path)}, config_file=str(cfg))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(env={}, config_file=str(tmp_path / "nope.yml"))

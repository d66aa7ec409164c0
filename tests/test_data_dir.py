"""The data directory (issue 18): made 0700 with its keys and SQLite file 0600 from the start
(whatever the umask), and `tidedesk admin` / `migrate` against a cluster's servers mint no keys
into it."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tests.support.clients import embedded
from tidedesk.settings import SettingsError, load_settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_and_files_are_private_from_creation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with embedded(tmp_path) as rt:
            assert rt.port is not None

    old = os.umask(0)  # a permissive umask: the modes must come from how the files are made
    try:
        asyncio.run(scenario())
    finally:
        os.umask(old)
    data = tmp_path / "data"
    assert mode(data) == 0o700
    files = sorted(p.name for p in data.iterdir())
    assert {"jwt.key", "aes.key", "tidedesk.sqlite3"} <= set(files), files
    for name in files:  # the -wal / -shm files take the database file's mode
        want = 0o700 if (data / name).is_dir() else 0o600  # the attachments directory
        assert mode(data / name) == want, (name, oct(mode(data / name)))


CLUSTER = {"TIDEDESK_DATABASE_URL": "mysql://td@db/tidedesk", "TIDEDESK_REDIS_URL":
           "redis://redis/0"}


def test_admin_against_a_cluster_needs_its_keys_and_mints_none(tmp_path: Path) -> None:
    env = {"TIDEDESK_DATA_DIR": str(tmp_path / "d"), **CLUSTER}
    with pytest.raises(SettingsError, match="tidedesk admin against a cluster"):
        load_settings(env=env, role="admin")
    migrate = load_settings(env=env, role="migrate")
    assert migrate.jwt_secret and migrate.aes_key
    assert not (tmp_path / "d").exists()  # nothing written
    # Embedded (SQLite, no servers): admin keeps generating into data_dir as before.
    load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path / "e")}, role="admin")
    assert (tmp_path / "e" / "aes.key").exists()

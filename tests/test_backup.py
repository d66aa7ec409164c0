"""`tidedesk backup` / `tidedesk restore` against real MariaDB (issue 19): two shards, encrypted
visitor fields and bodies; backup -> drop the databases -> restore -> the old conversations are
readable and decrypted with the keys the backup carried (sealed with the passphrase)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pymysql
import pytest

from tests.support.mariadb import HOST, PORT, USER, databases
from tests.support.processes import settings_env
from tidedesk.crypto import FieldCipher
from tidedesk.frames import frame_dicts
from tidedesk.models import shard_index
from tidedesk.storage import Storage

pytestmark = pytest.mark.mariadb

PASSPHRASE = "correct horse battery staple"


def tidedesk(env: dict[str, str], *args: str, stdin: bytes | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tidedesk.cli", *args], env=env, input=stdin,
                          capture_output=True, timeout=120, check=False)


def message(conv: str, seq: int) -> dict[str, object]:
    return {"conversation_id": conv, "seq": seq, "client_id": f"c{seq}", "sender_type": "visitor",
            "sender_id": "v", "sender_name": "Vera", "body": f"order {seq} 你好", "private": False,
            "ts": 1.0 + seq}


def recreate(urls: list[str]) -> None:
    conn = pymysql.connect(host=HOST, port=PORT, user=USER, password="", autocommit=True)
    with conn.cursor() as cur:
        for url in urls:
            name = url.rsplit("/", 1)[1]
            cur.execute(f"DROP DATABASE `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()


def test_backup_drop_restore_reads_old_conversations_decrypted(tmp_path: Path) -> None:
    aes_key = base64.b64encode(os.urandom(32)).decode()
    jwt_secret = uuid.uuid4().hex * 2
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    policies = tmp_path / "policies.yml"
    policies.write_text("policies: []  # the control plane's, kept with the backup\n")
    backup_file = tmp_path / "nightly.tdbackup"
    with databases(2) as urls:
        storage = Storage(urls, pool_size=2, cipher=FieldCipher(aes_key), encrypt_bodies=True)
        storage.migrate_all()

        async def write() -> list[tuple[str, str]]:
            made = []
            for i in range(6):
                vid = await storage.visitors.create(name=f"Vera {i} 你好", email=f"v{i}@x.test",
                                                    tags=[], locale="en")
                conv, _ = await storage.conversations.current_for_visitor(vid)
                await storage.messages.insert([message(conv.id, s) for s in range(1, 4)])
                made.append((vid, conv.id))
            return made

        made = asyncio.run(write())
        storage.close()
        assert {shard_index(c, 2) for _, c in made} == {0, 1}, "both shards hold messages"

        env = settings_env(TIDEDESK_DATABASE_URL=",".join(urls), TIDEDESK_AES_KEY=aes_key,
                           TIDEDESK_JWT_SECRET=jwt_secret)
        done = tidedesk(env, "backup", "--out", str(backup_file), "--passphrase-file",
                        str(tmp_path / "pass"), "--include", str(policies))
        assert done.returncode == 0, done.stderr.decode()
        assert oct(backup_file.stat().st_mode & 0o777) == "0o600"
        # The keys are in it only sealed.
        raw = gzip.decompress(backup_file.read_bytes())
        assert aes_key.encode() not in raw and jwt_secret.encode() not in raw
        assert b"Vera 0" not in raw, "visitor names stay ciphertext in the dump"

        recreate(urls)  # the databases are gone

        # The wrong passphrase opens nothing.
        (tmp_path / "wrong").write_text("not the passphrase at all\n")
        done = tidedesk(env, "restore", str(backup_file), "--passphrase-file",
                        str(tmp_path / "wrong"), "--keys-only", "--keys-out", str(tmp_path / "k"))
        assert done.returncode == 2 and b"wrong passphrase" in done.stderr, done.stderr
        assert not (tmp_path / "k").exists()

        # A fresh stack: first the keys (for its secrets), then the data, from stdin.
        keys_dir, files_dir = tmp_path / "secrets", tmp_path / "files"
        fresh = settings_env(TIDEDESK_DATABASE_URL=",".join(urls),
                             TIDEDESK_AES_KEY=base64.b64encode(os.urandom(32)).decode(),
                             TIDEDESK_JWT_SECRET=uuid.uuid4().hex * 2)
        done = tidedesk(fresh, "restore", str(backup_file), "--passphrase-file",
                        str(tmp_path / "pass"), "--keys-only", "--keys-out", str(keys_dir),
                        "--files-out", str(files_dir))
        assert done.returncode == 0, done.stderr.decode()
        restored_key = (keys_dir / "aes_key").read_text().strip()
        assert restored_key == aes_key
        assert (keys_dir / "jwt_secret").read_text().strip() == jwt_secret
        assert oct((keys_dir / "aes_key").stat().st_mode & 0o777) == "0o600"
        assert (files_dir / "policies.yml").read_text() == policies.read_text()
        stack = settings_env(TIDEDESK_DATABASE_URL=",".join(urls),
                             TIDEDESK_AES_KEY_FILE=str(keys_dir / "aes_key"),
                             TIDEDESK_JWT_SECRET_FILE=str(keys_dir / "jwt_secret"))
        done = tidedesk(stack, "restore", "-", "--passphrase-file", str(tmp_path / "pass"),
                        stdin=backup_file.read_bytes())
        assert done.returncode == 0, done.stderr.decode()
        assert b"restored" in done.stderr

        # The old conversations, read back and decrypted with the restored key.
        storage = Storage(urls, pool_size=2, cipher=FieldCipher(restored_key),
                          encrypt_bodies=True)
        try:
            async def read() -> None:
                for i, (vid, conv_id) in enumerate(made):
                    visitor = await storage.visitors.get(vid)
                    assert visitor is not None and visitor.name == f"Vera {i} 你好"
                    assert visitor.email == f"v{i}@x.test"
                    conv = await storage.conversations.get(conv_id)
                    assert conv is not None and conv.visitor_id == vid
                    got = frame_dicts(await storage.messages.page(conv_id, after_seq=0))
                    assert [m["body"] for m in got] == [f"order {s} 你好" for s in (1, 2, 3)]

            asyncio.run(read())
        finally:
            storage.close()

        # Restoring over data is refused unless asked.
        done = tidedesk(stack, "restore", str(backup_file), "--passphrase-file",
                        str(tmp_path / "pass"))
        assert done.returncode == 2 and b"already holds" in done.stderr, done.stderr
        done = tidedesk(stack, "restore", str(backup_file), "--passphrase-file",
                        str(tmp_path / "pass"), "--replace")
        assert done.returncode == 0, done.stderr.decode()

"""Backup -> `docker stack rm` (volumes too) -> a fresh stack -> restore -> the old conversation
is readable and decrypted (issue 19), on the real single-node Swarm, as docs/deploy.md says:
`tidedesk-entrypoint backup` through `docker exec -i`, the keys restored into secrets/ before
the new deploy, the data restored through a chat node."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.deploy.swarm_stack import REPO, Stack, build_images
from tests.support.swarm import ensure_swarm

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

PASSPHRASE = "a passphrase kept apart from the backups"
ARTIFACTS = REPO / "artifacts" / "deploy-backup"

SEED = """
import asyncio, json
from tidedesk.crypto import FieldCipher
from tidedesk.settings import load_settings
from tidedesk.storage import Storage
s = load_settings()
st = Storage(s.database_url, cipher=FieldCipher(s.aes_key, s.aes_previous_keys),
             encrypt_bodies=s.encrypt_message_bodies)
async def main():
    vid = await st.visitors.create(name="Vera 你好", email="vera@shop.test", tags=[], locale="en")
    conv, _ = await st.conversations.current_for_visitor(vid)
    await st.messages.insert([{"conversation_id": conv.id, "seq": n, "client_id": f"c{n}",
        "sender_type": "visitor", "sender_id": vid, "sender_name": "", "body": f"order {n} 你好",
        "private": False, "ts": 1.0 + n} for n in (1, 2, 3)])
    print(json.dumps({"visitor": vid, "conversation": conv.id}))
asyncio.run(main())
st.close()
"""

READ = """
import asyncio, json, sys
from tidedesk.crypto import FieldCipher
from tidedesk.frames import frame_dicts
from tidedesk.settings import load_settings
from tidedesk.storage import Storage
ids = json.loads(sys.argv[1])
s = load_settings()
st = Storage(s.database_url, cipher=FieldCipher(s.aes_key, s.aes_previous_keys),
             encrypt_bodies=s.encrypt_message_bodies)
async def main():
    v = await st.visitors.get(ids["visitor"])
    msgs = frame_dicts(await st.messages.page(ids["conversation"], after_seq=0))
    print(json.dumps({"name": v and v.name, "email": v and v.email,
                      "bodies": [m["body"] for m in msgs]}))
asyncio.run(main())
st.close()
"""


def exec_in_chatnode(*args: str, data: bytes | None = None) -> bytes:
    cid = Stack.containers("chatnode")[0]
    done = subprocess.run(["docker", "exec", "-i", cid, *args], input=data,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout


def test_backup_stack_rm_restore_reads_the_old_conversation(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("swarm-backup")
    ensure_swarm(workdir)
    build_images()
    Stack.remove()
    s = Stack(workdir)
    try:
        s.deploy()
        s.wait_ready(timeout=180)
        ids = json.loads(exec_in_chatnode("python3", "-c", SEED).decode().strip().splitlines()[-1])
        backup = exec_in_chatnode("tidedesk-entrypoint", "backup", "--out", "-",
                                  "--passphrase-stdin", data=(PASSPHRASE + "\n").encode())
        assert len(backup) > 100
        (workdir / "nightly.tdbackup").write_bytes(backup)

        Stack.remove()  # services, network, configs, secrets and the volumes: all gone

        # A fresh deployment: new keys, then the backup's keys over them (docs/deploy.md).
        secrets = workdir / "secrets"
        old_key = (secrets / "aes_key").read_text()
        for name in ("aes_key", "jwt_secret"):
            (secrets / name).unlink()
        subprocess.run([str(REPO / "swarm" / "make-secrets.sh"), str(secrets)], check=True,
                       capture_output=True, timeout=60)
        assert (secrets / "aes_key").read_text() != old_key
        (workdir / "pass").write_text(PASSPHRASE + "\n")
        done = subprocess.run([sys.executable, "-m", "tidedesk.cli", "restore",
                               str(workdir / "nightly.tdbackup"), "--passphrase-file",
                               str(workdir / "pass"), "--keys-only", "--keys-out", str(secrets)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert (secrets / "aes_key").read_text() == old_key

        s.deploy()
        s.wait_ready(timeout=180)
        exec_in_chatnode("tidedesk-entrypoint", "restore", "-", "--passphrase-stdin",
                         data=(PASSPHRASE + "\n").encode() + backup)
        got = json.loads(exec_in_chatnode("python3", "-c", READ, json.dumps(ids)).decode()
                         .strip().splitlines()[-1])
        assert got == {"name": "Vera 你好", "email": "vera@shop.test",
                       "bodies": ["order 1 你好", "order 2 你好", "order 3 你好"]}, got
        s.passed = True
    finally:
        if not s.passed:
            s.save_artifacts(ARTIFACTS / time.strftime("%Y%m%dT%H%M%S"))
        Stack.remove()

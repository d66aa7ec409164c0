"""The ``tidedesk`` command, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port, settings_env, wait_ready

TIDEDESK = [sys.executable, "-m", "tidedesk.cli"]


def run(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = settings_env(TIDEDESK_DATA_DIR=str(data_dir), **env)
    return subprocess.run(TIDEDESK + args, capture_output=True, text=True, env=full_env,
                          timeout=60, check=False)


@pytest.mark.parametrize("args", [
    [], ["dev"], ["chatnode"], ["router"], ["migrate"], ["admin"], ["admin", "create-agent"],
    ["admin", "list-agents"], ["loadgen"],
], ids=lambda a: " ".join(a) or "top")
def test_help_everywhere(tmp_path: Path, args: list[str]) -> None:
    out = run([*args, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: tidedesk" in out.stdout


def test_create_and_list_agents(tmp_path: Path) -> None:
    out = run(["admin", "create-agent", "--email", "mia@shop.test", "--password", "s3cret-pw",
               "--name", "Mia", "--pools", "general,experts", "--max-chats", "4", "--totp"],
              tmp_path)
    assert out.returncode == 0, out.stderr
    assert "TOTP secret: " in out.stdout and "otpauth://totp/" in out.stdout
    listed = run(["admin", "list-agents"], tmp_path)
    assert "mia@shop.test" in listed.stdout and "general,experts" in listed.stdout
    again = run(["admin", "create-agent", "--email", "mia@shop.test", "--password", "s3cret-pw",
                 "--name", "Mia"], tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_first_admin_without_a_tty_or_the_password_on_the_command_line(tmp_path: Path) -> None:
    """Issue 19: `docker exec -i ... create-agent --password-stdin < file` in a script."""
    full_env = settings_env(TIDEDESK_DATA_DIR=str(tmp_path))
    out = subprocess.run([*TIDEDESK, "admin", "create-agent", "--email", "boss@shop.test",
                          "--password-stdin", "--name", "Boss", "--role", "admin"],
                         input="a-long-admin-password\n", capture_output=True, text=True,
                         env=full_env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "role=admin" in out.stdout and "a-long-admin-password" not in out.stdout
    secret = tmp_path / "pw"
    secret.write_text("another-long-one\n")
    out = run(["admin", "create-agent", "--email", "ann@shop.test", "--password-file",
               str(secret), "--name", "Ann"], tmp_path)
    assert out.returncode == 0, out.stderr
    # The password read is the first line without its newline: signing in with it works.
    from tidedesk.auth import verify_password
    from tidedesk.settings import load_settings
    from tidedesk.storage import Storage

    settings = load_settings(env={"TIDEDESK_DATA_DIR": str(tmp_path)})
    storage = Storage(settings.database_url)
    try:
        ann = storage.agents.by_email_sync("ann@shop.test")
        assert ann is not None and verify_password(ann.password_hash, "another-long-one")
    finally:
        storage.close()
    short = run(["admin", "create-agent", "--email", "c@shop.test", "--password-file",
                 str(tmp_path / "missing"), "--name", "C"], tmp_path)
    assert short.returncode == 2 and "--password-file" in short.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--email", "not-an-email", "--password", "longenough", "--name", "X"], "--email"),
    (["--email", "a@b.c", "--password", "short", "--name", "X"], "--password"),
    (["--email", "a@b.c", "--password", "longenough", "--name", "X", "--max-chats", "0"],
     "--max-chats"),
    (["--email", "a@b.c", "--password", "longenough", "--name", "X", "--pools", " , "],
     "--pools"),
], ids=["email", "password", "max-chats", "pools"])
def test_create_agent_refuses_bad_input_without_traceback(tmp_path: Path, args: list[str],
                                                          message: str) -> None:
    out = run(["admin", "create-agent", *args], tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_bad_setting_fails_start_naming_the_key(tmp_path: Path) -> None:
    out = run(["dev"], tmp_path, TIDEDESK_PORT="http")
    assert out.returncode == 2
    assert "TIDEDESK_PORT" in out.stderr and "Traceback" not in out.stderr


def test_unknown_event_loop_fails_start_naming_the_key(tmp_path: Path) -> None:
    out = run(["dev"], tmp_path, TIDEDESK_EVENT_LOOP="trio")
    assert out.returncode == 2
    assert "TIDEDESK_EVENT_LOOP" in out.stderr and "Traceback" not in out.stderr


def test_chatnode_without_cluster_urls_says_what_to_set(tmp_path: Path) -> None:
    out = run(["chatnode"], tmp_path)
    assert out.returncode == 2 and "TIDEDESK_BROKER_URL" in out.stderr


@pytest.mark.parametrize("role", ["chatnode", "router"])
def test_cluster_role_without_keys_refuses_to_start(tmp_path: Path, role: str) -> None:
    out = run([role], tmp_path, TIDEDESK_BROKER_URL="amqp://127.0.0.1:1/",
              TIDEDESK_REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 2, out.stderr
    assert (f"tidedesk {role} needs TIDEDESK_JWT_SECRET and TIDEDESK_AES_KEY" in out.stderr
            and "Traceback" not in out.stderr)
    assert not (tmp_path / "jwt.key").exists()


def test_settings_prints_the_readme_table(tmp_path: Path) -> None:
    out = run(["settings"], tmp_path)
    assert out.returncode == 0 and "| `TIDEDESK_AES_KEY` |" in out.stdout


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        out = run(["migrate"], tmp_path)
        assert out.returncode == 0 and "schema at version" in out.stdout


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_dev_prints_where_everything_is_and_serves(tmp_path: Path, loop: str) -> None:
    port = free_port()
    env = settings_env(TIDEDESK_DATA_DIR=str(tmp_path), TIDEDESK_PORT=str(port),
                       TIDEDESK_DEMO_AGENT_EMAIL="owner@shop.test", TIDEDESK_EVENT_LOOP=loop)
    proc = subprocess.Popen([*TIDEDESK, "dev"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, "tidedesk dev")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for text in (f"http://127.0.0.1:{port}/demo", f"http://127.0.0.1:{port}/console",
                 "/api/v1/openapi.json", "owner@shop.test",
                 f"Event loop       : {loop} (TIDEDESK_EVENT_LOOP={loop})"):
        assert text in out

"""Keys and passwords never reach git (issue 19): .gitignore covers every file
swarm/make-secrets.sh writes and every key Tidedesk generates, and the shipped pre-commit hook
refuses them even when force-added, and any staged PEM private key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "scripts" / "git-hooks" / "pre-commit"


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                          check=check)


def ignored(path: str) -> bool:
    return git(REPO, "check-ignore", "--no-index", "-q", "--", path, check=False).returncode == 0


def test_every_generated_secret_is_ignored(tmp_path: Path) -> None:
    # What make-secrets.sh really writes, wherever the directory is.
    out = tmp_path / "secrets"
    subprocess.run([str(REPO / "swarm" / "make-secrets.sh"), str(out)], check=True,
                   capture_output=True, timeout=60)
    made = sorted(p.name for p in out.iterdir())
    assert len(made) >= 7, made
    for name in made:
        for where in ("secrets", "deploy/prod/secrets", "elsewhere"):
            assert ignored(f"{where}/{name}"), f"{where}/{name} is not ignored"
    # The embedded server's generated keys (in any data directory), TLS material, backups.
    for path in ("var/jwt.key", "var/aes.key", "data/jwt.key", "site/aes.key", "tls/site.pem",
                 "certs/server.key", "backups/2026-12-02.tdbackup", ".env"):
        assert ignored(path), f"{path} is not ignored"
    # ... and nothing the repository ships.
    for path in ("swarm/make-secrets.sh", "docker-stack.yml", "tidedesk/crypto.py",
                 "scripts/git-hooks/pre-commit", "docs/deploy.md"):
        assert not ignored(path), f"{path} must not be ignored"


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@example.com")
    git(r, "config", "user.name", "t")
    shutil.copy(REPO / ".gitignore", r / ".gitignore")
    git(r, "config", "core.hooksPath", str(HOOK.parent))
    (r / "README").write_text("hello\n")
    git(r, "add", ".gitignore", "README")
    git(r, "commit", "-q", "-m", "start")
    return r


def test_the_hook_refuses_force_added_secrets_and_private_keys(repo: Path) -> None:
    (repo / "secrets").mkdir()
    (repo / "secrets" / "aes_key").write_text("c2VjcmV0\n")
    git(repo, "add", "-f", "secrets/aes_key")
    done = git(repo, "commit", "-m", "oops", check=False)
    assert done.returncode != 0 and "secrets/aes_key" in done.stderr, done.stderr
    git(repo, "restore", "--staged", "secrets/aes_key")

    # A private key under an innocent name is refused by its content.
    (repo / "notes.txt").write_text("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n"
                                    "-----END EC PRIVATE KEY-----\n")
    git(repo, "add", "notes.txt")
    done = git(repo, "commit", "-m", "oops", check=False)
    assert done.returncode != 0 and "notes.txt (holds a private key)" in done.stderr, done.stderr
    git(repo, "restore", "--staged", "notes.txt")

    # Ordinary files go through.
    (repo / "app.py").write_text("print('hi')\n")
    git(repo, "add", "app.py")
    assert git(repo, "commit", "-q", "-m", "fine", check=False).returncode == 0
    assert git(repo, "log", "--format=%s").stdout.split("\n")[0] == "fine"

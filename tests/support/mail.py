"""Real mail servers for tests, started as processes on loopback ports.

- :class:`SmtpSink`: aiosmtpd (``tests/support/smtp_sink.py``) in its own process; the mails
  it received are :meth:`SmtpSink.messages`. :meth:`stop` and :meth:`start` again on the same
  port model a mail server that is down for a while.
- :class:`Dovecot`: Debian's ``dovecot-imapd`` with a throwaway configuration, one user and
  its Maildir under a temporary folder, plaintext login on 127.0.0.1. Tests put mail into it
  with IMAP ``APPEND`` (:meth:`Dovecot.append`).
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from imapclient import IMAPClient

from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until, wait_until_async
from tidedesk.mail.poller import READ_KEYWORD

DOVECOT = "/usr/sbin/dovecot"
# Servers start in well under a second; this bound only catches one that never will.
START_TIMEOUT_S = 15.0


class SmtpSink:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.smtp_sink", "--port", str(self.port),
             "--dir", str(self.folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"the SMTP sink did not start: {line}"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
            self.proc = None

    def messages(self) -> list[EmailMessage]:
        out = []
        for path in sorted(self.folder.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def wait_for_sync(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """:meth:`wait_for` for tests without an event loop of their own (Playwright's)."""
        return wait_until(f"{count} mail(s) at the SMTP sink",
                          lambda: (m if len(m := self.messages()) >= count else None), timeout,
                          every=0.05)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Until at least ``count`` mails arrived; returns them all (awaited, so a server in
        the same loop keeps running)."""
        return await wait_until_async(
            f"{count} mail(s) at the SMTP sink",
            lambda: (m if len(m := self.messages()) >= count else None), timeout, every=0.05)


def _run_as() -> tuple[str, int, int, str]:
    """(user, uid, gid, login user): the caller itself, or Dovecot's own users under root."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_uid, me.pw_gid, me.pw_name
    dovecot = pwd.getpwnam("dovecot")
    return "dovecot", dovecot.pw_uid, dovecot.pw_gid, "dovenull"


class Dovecot:
    USER = "shop"
    PASSWORD = "mailbox-pass"

    def __init__(self, root: Path) -> None:
        # Under root, Dovecot's own users must reach the files, and pytest's folders are
        # private to root: then a folder of our own, removed by stop().
        self._own_root = os.geteuid() == 0
        if self._own_root:
            root = Path(tempfile.mkdtemp(prefix="tidedesk-dovecot-"))
            root.chmod(0o755)
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"imap://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/INBOX"

    def _config(self) -> Path:
        user, uid, gid, login_user = _run_as()
        for sub in ("run", "mail", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "passwd").write_text(f"{self.USER}:{{PLAIN}}{self.PASSWORD}::::::\n")
        conf = self.root / "dovecot.conf"
        conf.write_text(f"""
base_dir = {self.root}/run
state_dir = {self.root}/run
log_path = {self.root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {user if os.geteuid() != 0 else 'dovecot'}
default_login_user = {login_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:{self.root}/mail/%u
passdb {{
  driver = passwd-file
  args = {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
""")
        if os.geteuid() == 0:
            for sub in ("mail", "home"):
                shutil.chown(self.root / sub, uid, gid)
        return conf

    def start(self) -> Dovecot:
        if not Path(DOVECOT).exists():
            raise AssertionError("dovecot-imapd is not installed (scripts/system-deps.sh)")
        conf = self._config()
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        wait_until("dovecot to accept a login", self._login_works, START_TIMEOUT_S,
                   every=0.1, errors=(OSError, Exception))
        return self

    def _login_works(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = self.root / "dovecot.log"
            out = self.proc.stdout.read() if self.proc.stdout else ""
            raise AssertionError(f"dovecot exited: {out}"
                                 f"{log.read_text() if log.exists() else ''}")
        with self.client():
            return True

    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=5)
        client.login(self.USER, self.PASSWORD)
        return client

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client() as client:
            client.append(folder, raw)

    def unseen(self, folder: str = "INBOX") -> int:
        """Mails a person has not read (the poller leaves ``\\Seen`` alone)."""
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            return len(client.search(["UNSEEN"]))

    def unhandled(self, folder: str = "INBOX") -> int:
        """Mails the poller has not handled yet."""
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            return len(client.search(["UNKEYWORD", READ_KEYWORD]))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
            self.proc = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_seen(imap: Dovecot, timeout: float = 10.0) -> None:
    """Until the poller handled every mail."""
    deadline = time.monotonic() + timeout
    while imap.unhandled():
        assert time.monotonic() < deadline, "the poller left mail unhandled"
        time.sleep(0.05)

"""A real Alertmanager with prometheus/alertmanager.yml as swarm/deploy.sh renders it (issue 19)
pages people: an e-mail to a real SMTP server (aiosmtpd, a subprocess) and a generic webhook,
as well as the control plane's webhook; an inhibited alert reaches nobody."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import require
from tests.deploy.test_prometheus_config import rendered_alertmanager
from tests.support.http import http_json
from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.prometheus


class Hooks:
    """Webhook receivers on one loopback port: every JSON body, by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                hooks.bodies.setdefault(self.path, []).append(
                    {**body, "_auth": self.headers.get("Authorization")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alertnames(self, path: str) -> set[str]:
        return {a["labels"]["alertname"] for b in self.bodies.get(path, []) for a in b["alerts"]}


@pytest.fixture()
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.server.shutdown()


@pytest.fixture()
def smtp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """aiosmtpd writing every message it gets into a Maildir."""
    port, maildir = free_port(), tmp_path / "maildir"
    proc = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                             "-c", "aiosmtpd.handlers.Mailbox", str(maildir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import socket

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until("aiosmtpd to listen", listening, 15, errors=(OSError,))
        yield port, maildir
    finally:
        stop_process(proc)


def mails(maildir: Path) -> list[tuple[str, str, str]]:
    if not maildir.exists():
        return []
    box = mailbox.Maildir(str(maildir), create=False)
    out = []
    for msg in box:
        body = msg.get_payload(decode=True) if not msg.is_multipart() else b"".join(
            p.get_payload(decode=True) or b"" for p in msg.walk() if not p.is_multipart())
        out.append((str(msg["To"]), str(msg["Subject"]), (body or b"").decode(errors="replace")))
    return out


def test_alertmanager_pages_people_by_email_and_webhook_and_the_control_plane(
    tmp_path: Path, hooks: Hooks, smtp: tuple[int, Path]
) -> None:
    smtp_port, maildir = smtp
    config = rendered_alertmanager(
        tmp_path, ALERT_EMAIL_TO="oncall@shop.test", ALERT_EMAIL_FROM="alerts@shop.test",
        ALERT_SMTP_SMARTHOST=f"127.0.0.1:{smtp_port}", ALERT_SMTP_REQUIRE_TLS="false",
        ALERT_WEBHOOK_URL=f"http://127.0.0.1:{hooks.port}/people")
    doc = yaml.safe_load(config.read_text())
    # The stack's addresses become loopback ones; the token file a temporary one.
    token = tmp_path / "token"
    token.write_text("t" * 32)
    cp = doc["receivers"][0]["webhook_configs"][0]
    cp["url"] = f"http://127.0.0.1:{hooks.port}/controlplane"
    cp["http_config"]["authorization"]["credentials_file"] = str(token)
    doc["route"]["group_wait"] = "1s"
    config.write_text(yaml.safe_dump(doc))

    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen([require("prometheus-alertmanager", "prometheus-alertmanager"),
                             f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api/v2"
    try:
        wait_until("Alertmanager to answer", lambda: http_json("GET", base + "/status")[0] == 200,
                   20, errors=(OSError,))
        alerts = [
            {"labels": {"alertname": "TidedeskNoChatNodeUp", "service": "chatnode",
                        "severity": "critical"},
             "annotations": {"summary": "no chat node is being scraped: visitors cannot connect"}},
            # Explained by the one above (same service): inhibited, nobody hears of it.
            {"labels": {"alertname": "TidedeskHighCPU", "service": "chatnode",
                        "severity": "warning"},
             "annotations": {"summary": "chatnode CPU above 70%"}},
        ]
        status, _ = http_json("POST", base + "/alerts", alerts)
        assert status == 200

        wait_until("an e-mail page", lambda: any("TidedeskNoChatNodeUp" in s
                                                 for _, s, _ in mails(maildir)), 30)
        wait_until("the people webhook",
                   lambda: "TidedeskNoChatNodeUp" in hooks.alertnames("/people"), 30)
        wait_until("the control plane's webhook",
                   lambda: "TidedeskNoChatNodeUp" in hooks.alertnames("/controlplane"), 30)
        to, subject, body = next(m for m in mails(maildir) if "TidedeskNoChatNodeUp" in m[1])
        assert to == "oncall@shop.test" and "FIRING" in subject
        assert "no chat node is being scraped" in body
        assert hooks.bodies["/controlplane"][0]["_auth"] == "Bearer " + "t" * 32

        # The inhibited warning is known to Alertmanager and was sent to nobody.
        _, listed = http_json("GET", base + "/alerts?filter=alertname%3D%22TidedeskHighCPU%22")
        assert listed and listed[0]["status"]["inhibitedBy"], listed
        assert all("TidedeskHighCPU" not in s for _, s, _ in mails(maildir))
        assert "TidedeskHighCPU" not in hooks.alertnames("/people") | hooks.alertnames(
            "/controlplane")
    finally:
        stop_process(proc)
        log.close()

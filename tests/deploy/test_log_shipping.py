"""Log shipping as docs/deploy.md (Runbook, Logs) shows it (issue 19): the Tidedesk image's JSON
log lines reach a local syslog receiver through Docker's syslog log driver, one JSON object per
message after the syslog header."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from tests.deploy.swarm_stack import TEST_IMAGES, build_images
from tests.support.swarm import ensure_swarm

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_json_logs_reach_a_syslog_receiver(tmp_path_factory: pytest.TempPathFactory) -> None:
    ensure_swarm(tmp_path_factory.mktemp("docker"))
    build_images()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    port = sock.getsockname()[1]
    received: list[str] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                received.append(sock.recv(65536).decode(errors="replace"))
            except TimeoutError:
                continue

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    try:
        # A chat node whose database never resolves: it logs its waits, then exits 1.
        done = subprocess.run(
            ["docker", "run", "--rm", "--log-driver", "syslog",
             "--log-opt", f"syslog-address=udp://127.0.0.1:{port}",
             "--log-opt", "tag=tidedesk-{{.Name}}", "--log-opt", "syslog-format=rfc5424",
             "-e", "TIDEDESK_DATABASE_URL=mysql://tidedesk@mariadb.not-here.invalid:3306/x",
             "-e", "TIDEDESK_BROKER_URL=amqp://guest:guest@127.0.0.1:9/%2F",
             "-e", "TIDEDESK_REDIS_URL=redis://127.0.0.1:9/0",
             "-e", f"TIDEDESK_JWT_SECRET={os.urandom(24).hex()}",
             "-e", f"TIDEDESK_AES_KEY={base64.b64encode(os.urandom(32)).decode()}",
             "-e", "TIDEDESK_STARTUP_WAIT_S=3", "-e", "TIDEDESK_LOG_FORMAT=json",
             TEST_IMAGES["TIDEDESK_IMAGE"], "chatnode"],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 1, done.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("backend did not come up" in r
                                                       for r in received):
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(2)
        sock.close()
    records = []
    for datagram in received:
        assert "tidedesk-" in datagram, datagram  # the tag names the container
        start = datagram.find("{")
        if start >= 0:
            records.append(json.loads(datagram[start:]))
    waits = [r for r in records if r.get("msg") == "waiting for backend"]
    assert waits and "does not resolve yet" in waits[0]["error"], received[:5]
    assert any(r.get("msg") == "backend did not come up; giving up" for r in records)

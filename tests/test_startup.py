"""Start-up without a crash loop (issue 19): a chat node or router started before its backend
listens (or resolves) waits with jittered back-off, logs JSON while it waits (no traceback),
answers /healthz 200 and /readyz 503 saying what it waits for, and is ready once it can serve."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Proc, cluster
from tests.support.forward import forwarding
from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until
from tidedesk.backoff import Backoff

pytestmark = [pytest.mark.mariadb, pytest.mark.rabbitmq, pytest.mark.redis]


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(base_s=0.5, cap_s=10)
    assert [b.delay(n, 0.0) for n in range(7)] == [0.25, 0.5, 1, 2, 4, 5, 5]
    assert b.delay(3, 0.999) < 4 and b.delay(3, 0.999) > 3.99
    assert b.delay(1000, 0.5) == 7.5  # no overflow, still capped
    with pytest.raises(ValueError):
        b.delay(0, 1.0)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log as JSON; a line that is not JSON fails the test."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"a log line is not JSON: {line!r}\n{path.read_text()[-2000:]}")
    return out


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def waits(path: Path, backend: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(path)
            if r.get("msg") == "waiting for backend" and r.get("backend", "").startswith(backend)]


def test_chat_node_and_router_wait_for_backends_that_open_late(tmp_path: Path) -> None:
    db_port, amqp_port = free_port(), free_port()
    with cluster(tmp_path, shards=1) as c:
        # The chat node's MariaDB and the router's RabbitMQ are ports nobody listens on yet.
        real_db = c.env["TIDEDESK_DATABASE_URL"]
        late_db = real_db.replace("127.0.0.1:3306", f"127.0.0.1:{db_port}")
        late_amqp = c.env["TIDEDESK_BROKER_URL"].replace(":5672", f":{amqp_port}")
        base = {**c.env, "TIDEDESK_LOG_FORMAT": "json", "TIDEDESK_STARTUP_WAIT_S": "120"}
        node = Proc("chatnode", "late-db", {**base, "TIDEDESK_DATABASE_URL": late_db}, tmp_path)
        router = Proc("router", "late-mq", {**base, "TIDEDESK_BROKER_URL": late_amqp}, tmp_path)
        c.procs += [node, router]
        node.start(wait_ready=False)
        router.start(wait_ready=False)

        wait_until("the chat node to log twice that it waits for MariaDB",
                   lambda: len(waits(node.log_path, "database")) >= 2, 30, every=0.2)
        wait_until("the router to log twice that it waits for RabbitMQ",
                   lambda: len(waits(router.log_path, "rabbitmq")) >= 2, 30, every=0.2)
        first = waits(node.log_path, "database")[0]
        assert first["level"] == "warning" and first["retry_in_s"] > 0, first
        assert f"127.0.0.1:{db_port}" in first["error"], first
        # Alive, not ready, and saying why.
        for proc, backend in ((node, "database"), (router, "rabbitmq")):
            assert probe(proc.port, "/healthz")[0] == 200
            status, body = probe(proc.port, "/readyz")
            assert status == 503 and body["reason"].startswith(f"waiting for {backend}"), body
        assert node.popen is not None and node.popen.poll() is None
        assert router.popen is not None and router.popen.poll() is None

        with forwarding(db_port, 3306), forwarding(amqp_port, 5672):
            node.wait_ready(timeout=40)
            router.wait_ready(timeout=40)
            up = [r for r in json_lines(node.log_path) if r.get("msg") == "backend is up"]
            assert up and up[0]["attempts"] >= 2, up
            # The chat node serves its API now, not only the probes.
            status, _ = probe(node.port, "/api/v1/openapi.json")
            assert status == 200
        for proc in (node, router):
            text = proc.log_path.read_text()
            assert "Traceback" not in text, text[-3000:]


def test_a_name_that_never_resolves_ends_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    with cluster(tmp_path, shards=1) as c:
        env = {**c.env, "TIDEDESK_LOG_FORMAT": "json", "TIDEDESK_STARTUP_WAIT_S": "3",
               "TIDEDESK_REDIS_URL": "redis://redis.tidedesk-not-yet.invalid:6379/0",
               "TIDEDESK_PORT": str(free_port())}
        # JSON logs and the final error line both go to stderr.
        proc = subprocess.Popen([sys.executable, "-m", "tidedesk.cli", "router"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            stop_process(proc)
        assert proc.returncode == 1
        lines = err.decode().splitlines()
        assert "Traceback" not in err.decode(), err.decode()
        last = lines[-1]
        assert last.startswith("tidedesk: error: redis") and "TIDEDESK_STARTUP_WAIT_S" in last
        log = tmp_path / "router.log"
        log.write_text("\n".join(lines[:-1]))
        waited = waits(log, "redis")
        assert waited and "does not resolve yet" in waited[0]["error"], waited
        assert any(r.get("msg") == "backend did not come up; giving up"
                   for r in json_lines(log))


def test_a_started_server_collects_its_young_garbage_rarely_and_skips_its_startup_heap(
        ) -> None:
    """tidedesk/heap.py, issue 17: after start-up the heap is frozen and the youngest
    generation collected every YOUNG_THRESHOLD allocations, not CPython's 700. (Own process:
    the test runner's collector is left alone.)"""
    import subprocess
    import sys

    code = ("import gc; from tidedesk.heap import YOUNG_THRESHOLD, settle_after_startup; "
            "before = gc.get_threshold(); settle_after_startup(); "
            "print(before[0], gc.get_threshold()[0] == YOUNG_THRESHOLD, "
            "gc.get_threshold()[1:] == before[1:], gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["700", "True", "True", "True"], out

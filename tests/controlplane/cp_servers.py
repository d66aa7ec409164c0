"""Real servers for the control-plane tests: Prometheus, Alertmanager, a tiny exporter, dockerd
with a single-node Swarm, and the daemon itself as a subprocess. Everything binds to 127.0.0.1 on
free ports, keeps its data in a temporary directory and is stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from controlplane.config import hash_token
from tests.support.processes import free_port, stop_process
from tests.support.swarm import docker
from tests.support.swarm import ensure_swarm as ensure_node_is_manager
from tests.support.waiting import wait_until

TOKEN = "cp-test-token-0123456789"
TINY_IMAGE = "tidedesk-test-tiny:latest"
ALERT_SERVICE = "cpalert-job"  # the `service` label of the test alert rule


class Exporter:
    """A /metrics endpoint whose ``tidedesk_cptest_load{case=...}`` values the test sets."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauge = Gauge("tidedesk_cptest_load", "test load", ["case"], registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    def set(self, case: str, value: float) -> None:
        self.gauge.labels(case).set(value)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, workdir: Path, exporter_port: int, alertmanager_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("Debian's prometheus is not installed (scripts/system-deps.sh)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = workdir / "rules.yml"
        rules.write_text(
            "groups:\n"
            "  - name: cptest\n"
            "    rules:\n"
            "      - alert: CpTestBacklog\n"
            '        expr: sum(tidedesk_cptest_load{case="alert"}) > 50\n'
            "        labels:\n"
            f"          service: {ALERT_SERVICE}\n"
            "        annotations:\n"
            "          summary: backlog too long\n"
        )
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            "alerting:\n  alertmanagers:\n    - static_configs:\n"
            f"        - targets: ['127.0.0.1:{alertmanager_port}']\n"
            "scrape_configs:\n  - job_name: cptest\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{exporter_port}']\n"
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            "prometheus to be ready",
            lambda: requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200,
            60,
        )

    def value(self, query: str) -> float | None:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2)
        result = r.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, query: str, value: float, timeout: float = 20) -> None:
        wait_until(f"{query} == {value}", lambda: self.value(query) == value, timeout)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Alertmanager:
    def __init__(self, workdir: Path, port: int, webhook_url: str, token: str) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            raise RuntimeError("Debian's prometheus-alertmanager is not installed")
        self.url = f"http://127.0.0.1:{port}"
        config = workdir / "alertmanager.yml"
        config.write_text(
            "route:\n  receiver: controlplane\n  group_by: [alertname, service]\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 3s\n"
            "receivers:\n  - name: controlplane\n    webhook_configs:\n"
            f"      - url: '{webhook_url}'\n"
            "        send_resolved: true\n"
            "        http_config:\n          authorization:\n"
            f"            credentials: '{token}'\n"
        )
        self.log = (workdir / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            "alertmanager to be ready",
            lambda: requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200,
            60,
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


# --- Docker -------------------------------------------------------------------------------------
def ensure_swarm(workdir: Path) -> None:
    """dockerd running and a swarm manager (tests.support.swarm), and the tiny image built."""
    ensure_node_is_manager(workdir)
    if docker("image", "inspect", TINY_IMAGE, check=False, timeout=30) in ("", "[]"):
        build_tiny_image()


def build_tiny_image() -> None:
    """A rootfs holding only Debian's static busybox, imported without any registry."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("busybox-static is not installed (scripts/system-deps.sh)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for name in ("sh", "sleep"):
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    subprocess.run(
        ["docker", "import", "-", TINY_IMAGE], input=buf.getvalue(), check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip


def swarm_replicas(service: str) -> int:
    return int(docker("service", "inspect", service, "--format",
                      "{{.Spec.Mode.Replicated.Replicas}}"))  # fmt: skip


def swarm_running(service: str) -> int:
    out = docker("service", "ps", service, "--filter", "desired-state=running",
                 "--format", "{{.CurrentState}}")  # fmt: skip
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


# --- the daemon ---------------------------------------------------------------------------------
class Daemon:
    """``python -m controlplane`` (the same entry point as ``tidedesk controlplane``)."""

    def __init__(
        self,
        workdir: Path,
        policies_yaml: str,
        prometheus_url: str,
        nomad_addr: str = "http://127.0.0.1:9",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        token_secret: str | None = None,
    ) -> None:
        """``token_secret`` is what the daemon's secret holds: by default TOKEN's hash."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.policies = workdir / f"policies-{self.port}.yml"
        self.policies.write_text(policies_yaml)
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.log = self.log_path.open("wb")
        secret = token_secret if token_secret is not None else hash_token(TOKEN)
        env = {**os.environ, "TIDEDESK_CONTROLPLANE_TOKEN": secret}
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "controlplane",
                "--policies", str(self.policies),
                "--listen", f"127.0.0.1:{self.port}",
                "--prometheus", prometheus_url,
                "--nomad-addr", nomad_addr,
                "--log-level", "DEBUG",
                *extra_args,
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            wait_until(
                "the control plane to answer /healthz",
                lambda: requests.get(f"{self.url}/healthz", timeout=1).status_code == 200,
                30,
            )
        except AssertionError:
            self.stop()
            raise AssertionError(self.log_path.read_text(errors="replace")[-3000:]) from None

    def request(self, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=5, **kw)

    def status(self, name: str) -> dict[str, Any]:
        for p in self.request("GET", "/v1/status").json()["policies"]:
            if p["name"] == name:
                return dict(p)
        raise KeyError(name)

    def decisions(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        r = self.request("GET", f"/v1/decisions?policy={name}&limit={limit}")
        return list(r.json()["decisions"])

    def audit(self, name: str | None = None) -> list[dict[str, Any]]:
        q = f"?policy={name}&limit=1000" if name else "?limit=1000"
        return list(self.request("GET", "/v1/audit" + q).json()["audit"])

    def stop(self) -> int | None:
        stop_process(self.proc)
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def daemon(*args: Any, **kw: Any) -> Iterator[Daemon]:
    d = Daemon(*args, **kw)
    try:
        yield d
    finally:
        d.stop()

"""The Tidedesk stack on the local single-node Swarm, for the end-to-end test.

Everything here drives the real ``docker`` CLI. The stack has its own name (``shop-e2e``),
published ports picked free at start, and is removed at the end; nothing else on the daemon
(other people's services, the swarm itself) is touched.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.http import http_json, insecure_tls
from tests.support.processes import free_port
from tests.support.routing import write_routing
from tests.support.swarm import docker, remove_stack
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
STACK = "shop-e2e"  # not "tidedesk": every name must follow the stack (issue 19)
BUILD_TIMEOUT_S = 540  # a fresh machine: debootstrap + apt + wheels + docker build
TEST_IMAGES = {
    "TIDEDESK_IMAGE": "tidedesk/tidedesk:local",
    "REDIS_IMAGE": "tidedesk-test/redis:bookworm",
    "RABBITMQ_IMAGE": "tidedesk-test/rabbitmq:bookworm",
    "MARIADB_IMAGE": "tidedesk-test/mariadb:bookworm",
    "HAPROXY_IMAGE": "tidedesk-test/haproxy:bookworm",
    "PROMETHEUS_IMAGE": "tidedesk-test/prometheus:bookworm",
    "ALERTMANAGER_IMAGE": "tidedesk-test/alertmanager:bookworm",
}
SERVICES = ("haproxy", "chatnode", "routernode", "controlplane", "redis", "rabbitmq", "mariadb",
            "prometheus", "alertmanager")
AGENT_EMAIL = "e2e-agent@tidedesk.test"
AGENT_PASSWORD = "e2e-agent-password"
# Issue 13's sign-out scenario: two more agents, alone in a pool of their own (visitors tagged
# `handover` go there), so a hand-over between them never touches the seeded agent's chats.
HANDOVER_POOL = "handover"
HANDOVER_AGENTS = {"ann": "e2e-ann@tidedesk.test", "bob": "e2e-bob@tidedesk.test"}
HANDOVER_PASSWORD = "e2e-handover-password"

# The test's policy: the shipped one's shape (the service named through ${STACK}, which the
# control plane fills in from the stack's namespace label) with short waits, so a scale-up, a
# drift restore and a scale-down fit in a few minutes. Load = open WebSockets; 15 per chat node.
CONNECTIONS_PER_NODE = 15
POLICIES = f"""
policies:
  - name: chatnode
    service: ${{STACK}}_chatnode
    driver: swarm
    min: 2
    max: 4
    interval: 5s
    warmup: 10s
    scale_up_wait: 20s
    scale_down_cooldown: 30s
    scale_down_stabilization: 20s
    step: {{up_max_percent: 100, up_min: 1, down_max: 2}}
    checks:
      - name: connections
        query: >-
          sum(tidedesk_connections{{service="chatnode"}})
          or (sum(up{{service="chatnode"}} == 1) * 0)
        target: {CONNECTIONS_PER_NODE}
        for: 10s
"""
# Load visitors are tagged `load` and go to a pool nobody serves: they hold a WebSocket (the
# load) without queueing in front of the conversations the test follows.
ROUTING = f"""
rules:
  - name: load
    match: {{tags: [load]}}
    pool: overflow
  - name: handover
    match: {{tags: [handover]}}
    pool: {HANDOVER_POOL}
  - name: everyone
    pool: general
"""

def build_images() -> float:
    started = time.monotonic()
    done = subprocess.run([str(REPO / "swarm" / "build-images.sh")], cwd=REPO,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"swarm/build-images.sh failed:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return time.monotonic() - started


class Stack:
    name = STACK  # a subclass deploys under another name (test_swarm_two_nodes.py)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.passed = False
        self.ports = {name: free_port()
                      for name in ("http", "https", "controlplane", "prom", "alertmanager")}
        secrets = workdir / "secrets"
        subprocess.run([str(REPO / "swarm" / "make-secrets.sh"), str(secrets)], check=True,
                       capture_output=True, timeout=60)
        self.token = (secrets / "controlplane_token").read_text().strip()
        # Prometheus as shipped, but scraping and evaluating every 5 s.
        prom = (REPO / "prometheus" / "prometheus.yml").read_text()
        prom = prom.replace("scrape_interval: 15s", "scrape_interval: 5s")
        prom = prom.replace("evaluation_interval: 15s", "evaluation_interval: 5s")
        (workdir / "prometheus.yml").write_text(prom)
        (workdir / "policies.yml").write_text(POLICIES)
        # Alertmanager as shipped; the redeploy phase edits it to show a changed config deploys.
        self.alertmanager_yml = workdir / "alertmanager.yml"
        self.alertmanager_yml.write_text((REPO / "prometheus" / "alertmanager.yml").read_text())
        routing_file = write_routing(workdir, ROUTING)
        self.env = {
            **os.environ,
            **TEST_IMAGES,
            "TIDEDESK_SECRETS_DIR": str(secrets),
            "PROMETHEUS_CONFIG": str(workdir / "prometheus.yml"),
            "TIDEDESK_POLICIES_CONFIG": str(workdir / "policies.yml"),
            "TIDEDESK_ROUTING_CONFIG": str(routing_file),
            "ALERTMANAGER_CONFIG": str(self.alertmanager_yml),
            "HTTP_PORT": str(self.ports["http"]),
            "HTTPS_PORT": str(self.ports["https"]),
            # swarm/local-ports.sh opens these on 127.0.0.1 (nothing else publishes them).
            "CONTROLPLANE_PORT": str(self.ports["controlplane"]),
            "PROMETHEUS_PORT": str(self.ports["prom"]),
            "ALERTMANAGER_PORT": str(self.ports["alertmanager"]),
            # HAProxy ramps a new replica's weight up over slowstart; 30 s in production, 5 s
            # here so the test can see new connections land on new replicas quickly.
            "CHATNODE_SLOWSTART": "5s",
        }

    # --- addresses ----------------------------------------------------------------------------
    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.ports['https']}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ports['http']}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.ports['https']}"

    # --- lifecycle ----------------------------------------------------------------------------
    def deploy(self) -> None:
        """swarm/deploy.sh, as the docs say: configs and secrets named by their content."""
        done = subprocess.run(
            [str(REPO / "swarm" / "deploy.sh"), self.name, "--resolve-image", "never"],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"swarm/deploy.sh failed: {done.stdout[-2000:]}"
                               f"{done.stderr[-3000:]}")

    def local_ports(self, action: str) -> None:
        """swarm/local-ports.sh: the admin ports on 127.0.0.1 only."""
        done = subprocess.run([str(REPO / "swarm" / "local-ports.sh"), self.name, action], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"swarm/local-ports.sh {action} failed: {done.stderr[-2000:]}")

    def plain_get(self, path: str) -> tuple[int, str]:
        """GET over plain HTTP without following redirects: (status, Location)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("Location") or ""
        finally:
            conn.close()

    def reachable_off_loopback(self) -> list[str]:
        """The admin ports that answer on a non-loopback address of this host."""
        addresses = [a for a in subprocess.run(["hostname", "-I"], capture_output=True,
                                               text=True, timeout=10).stdout.split()
                     if ":" not in a and not a.startswith("127.")]
        assert addresses, "this host has no non-loopback IPv4 address to try"
        reached = []
        for address in addresses[:2]:
            for name in ("controlplane", "prom", "alertmanager"):
                try:
                    with socket.create_connection((address, self.ports[name]), timeout=2):
                        reached.append(f"{address}:{self.ports[name]} ({name})")
                except OSError:
                    pass
        return reached

    @classmethod
    def all_healthy(cls) -> bool:
        """Every running container of the stack has a healthcheck and reports healthy."""
        ids = docker("ps", "-q", "--filter", f"label=com.docker.stack.namespace={cls.name}").split()
        if len(ids) < len(SERVICES):
            return False
        states = docker("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}"
                        "{{else}}none{{end}}", *ids).split()
        return all(state == "healthy" for state in states)

    @classmethod
    def published_services(cls) -> set[str]:
        out = set()
        for service in SERVICES:
            ports = docker("service", "inspect", f"{cls.name}_{service}", "--format",
                           "{{json .Endpoint.Ports}}")
            if ports not in ("", "null", "[]"):
                out.add(service)
        return out

    @classmethod
    def config_names(cls, service: str) -> list[str]:
        out = docker("service", "inspect", f"{cls.name}_{service}", "--format",
                     "{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}} {{end}}")
        return out.split()

    @classmethod
    def remove(cls) -> None:
        """Remove the stack and its volumes, so the next deploy starts from nothing."""
        remove_stack(cls.name)

    def wait_ready(self, timeout: float) -> None:
        def all_running() -> bool:
            return all(self.running(s) >= max(1, self.replicas(s)) for s in SERVICES)

        wait_until("every service of the stack to run", all_running, timeout, every=2)
        wait_until("HAProxy to reach a ready chat node",
                   lambda: http_json("GET", self.https + "/readyz", None, None, 3.0,
                                     insecure_tls())[0] == 200,
                   timeout, every=2)
        self.local_ports("up")
        wait_until("the control plane to answer",
                   lambda: self.controlplane("GET", "/v1/status")[0] == 200, timeout, every=2)

    # --- what runs ----------------------------------------------------------------------------
    @classmethod
    def replicas(cls, service: str) -> int:
        """The replicated count; 1 for a global service (one node here)."""
        out = docker("service", "inspect", f"{cls.name}_{service}", "--format",
                     "{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}"
                     "{{else}}1{{end}}")
        return int(out.strip() or 0)

    @classmethod
    def tasks(cls, service: str) -> list[dict[str, Any]]:
        out = docker("service", "ps", f"{cls.name}_{service}", "--no-trunc", "--format",
                     "{{json .}}")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    @classmethod
    def running(cls, service: str) -> int:
        return sum(1 for t in cls.tasks(service)
                   if t.get("DesiredState") == "Running"
                   and str(t.get("CurrentState", "")).startswith("Running"))

    @classmethod
    def running_task_ids(cls, service: str) -> set[str]:
        return {str(t["ID"]) for t in cls.tasks(service)
                if t.get("DesiredState") == "Running"
                and str(t.get("CurrentState", "")).startswith("Running")}

    @classmethod
    def updating(cls, service: str) -> bool:
        out = docker("service", "inspect", f"{cls.name}_{service}", "--format",
                     "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}")
        return out.strip() in ("updating", "rollback_started")

    @classmethod
    def containers(cls, service: str) -> list[str]:
        out = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={cls.name}_"
                     f"{service}")
        return out.split()

    def create_agent(self, email: str = AGENT_EMAIL, password: str = AGENT_PASSWORD,
                     name: str = "E2E Agent", pools: str = "general", max_chats: int = 50) -> None:
        """As docs/deploy.md says: ``docker exec -i`` of a chat node, the password on stdin."""
        cid = self.containers("chatnode")[0]
        out = docker("exec", "-i", cid, "tidedesk-entrypoint", "admin", "create-agent",
                     "--email", email, "--password-stdin", "--name", name, "--pools", pools,
                     "--max-chats", str(max_chats), timeout=60, check=False,
                     stdin=password + "\n")
        if "created agent" not in out and "exists already" not in out:
            raise RuntimeError(f"creating the agent {email} failed: {out}")

    def post_alert(self, alertname: str, service: str) -> None:
        """Fire an alert into the stack's Alertmanager, from inside the overlay network."""
        body = json.dumps([{"labels": {"alertname": alertname, "service": service,
                                       "severity": "warning"},
                            "annotations": {"summary": "fired by the end-to-end test"}}])
        code = ("import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
                "'http://alertmanager:9093/api/v2/alerts', data=sys.argv[1].encode(), "
                "headers={'Content-Type': 'application/json'}), timeout=10)")
        docker("exec", self.containers("chatnode")[0], "python3", "-c", code, body, timeout=30)

    def alerts_received(self, policy: str) -> list[dict[str, Any]]:
        _, data = self.controlplane("GET", "/v1/status")
        return [a for p in data["policies"] if p["name"] == policy for a in p["alerts"]]

    # --- APIs ---------------------------------------------------------------------------------
    def controlplane(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"http://127.0.0.1:{self.ports['controlplane']}{path}", body,
                         token=self.token, timeout=5)

    def prom(self, query: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.ports['prom']}/api/v1/query?"
               + urllib.parse.urlencode({"query": query}))
        status, data = http_json("GET", url, timeout=5)
        assert status == 200, data
        return list(data["data"]["result"])

    def connections_by_instance(self) -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1])
                for r in self.prom('sum by (instance) (tidedesk_connections{service="chatnode"})')}

    def haproxy_servers_up(self) -> int:
        result = self.prom('count(haproxy_server_status{proxy="chatnodes",state="UP"} == 1)')
        return int(float(result[0]["value"][1])) if result else 0

    # --- evidence -----------------------------------------------------------------------------
    def save_artifacts(self, dest: Path) -> None:
        """`docker service ps`, every task container's log, the control plane's decisions."""
        dest.mkdir(parents=True, exist_ok=True)
        for service in SERVICES:
            name = f"{self.name}_{service}"
            (dest / f"ps-{service}.txt").write_text(
                docker("service", "ps", "--no-trunc", name, check=False, timeout=30))
            # Per container (exited ones too): `docker service logs` can hang on gone tasks.
            logs = []
            for cid in docker("ps", "-aq", "--filter",
                              f"label=com.docker.swarm.service.name={name}",
                              check=False).split():
                try:
                    done = subprocess.run(["docker", "logs", "--timestamps", "--tail", "400",
                                           cid], capture_output=True, text=True, timeout=20,
                                          check=False)
                    logs.append(f"===== container {cid}\n{done.stdout}{done.stderr}")
                except subprocess.TimeoutExpired:
                    logs.append(f"===== container {cid}: docker logs timed out")
            (dest / f"logs-{service}.txt").write_text("\n".join(logs))
        for path in ("/v1/decisions?limit=200", "/v1/status"):
            try:
                _, data = self.controlplane("GET", path)
                text = json.dumps(data, indent=2)
            except OSError as exc:
                text = f"control plane unreachable: {exc}"
            name = path.strip("/").split("?")[0].replace("/", "-")
            (dest / f"controlplane-{name}.json").write_text(text)

"""docker-stack.yml as swarm/deploy.sh renders it (`docker stack config`, no deploy): configs and
secrets named by content, names that follow the stack (issue 19)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.haproxy]

NAME_MAX = 64  # Swarm's limit for config and secret names


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("stack-file") / "secrets"
    subprocess.run([str(REPO / "swarm" / "make-secrets.sh"), str(d)], check=True,
                   capture_output=True, timeout=60)
    return d


def render(stack: str, secrets: Path, **env: str) -> dict[str, Any]:
    if shutil.which("docker") is None:
        pytest.fail("docker is not installed (scripts/system-deps.sh installs docker.io)")
    done = subprocess.run(
        [str(REPO / "swarm" / "deploy.sh"), stack],
        env={**os.environ, "DEPLOY_DRY_RUN": "1", "TIDEDESK_SECRETS_DIR": str(secrets), **env},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def short8(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def test_configs_and_secrets_are_named_by_stack_and_content(secrets_dir: Path) -> None:
    doc = render("shop-7", secrets_dir)
    objects = {**doc["configs"], **doc["secrets"]}
    assert len(objects) == 15  # the stack file's own
    for key, obj in objects.items():
        name, file = obj["name"], Path(obj["file"])
        assert name.startswith("shop-7_") and len(name) <= NAME_MAX, (key, name)
        assert name.endswith("-" + short8(file)), (key, name, file)
    assert doc["configs"]["haproxy_cfg"]["name"].startswith("shop-7_haproxy_cfg-")
    assert doc["secrets"]["tidedesk_aes_key"]["name"].startswith("shop-7_aes_key-")
    # Inside the containers the files keep their paths (/run/secrets/<key>).
    chat = doc["services"]["chatnode"]
    assert {s["source"] for s in chat["secrets"]} >= {"tidedesk_aes_key", "tidedesk_db_password"}


def test_a_changed_file_gets_a_new_name_and_the_others_keep_theirs(
    secrets_dir: Path, tmp_path: Path
) -> None:
    before = render("shop-7", secrets_dir)
    edited = tmp_path / "prometheus.yml"
    edited.write_text((REPO / "prometheus" / "prometheus.yml").read_text() + "# edited\n")
    after = render("shop-7", secrets_dir, PROMETHEUS_CONFIG=str(edited))
    names = {k: v["name"] for k, v in {**before["configs"], **before["secrets"]}.items()}
    new = {k: v["name"] for k, v in {**after["configs"], **after["secrets"]}.items()}
    changed = {k for k in names if names[k] != new[k]}
    assert changed == {"prometheus_yml"}, changed


def test_the_plain_stack_deploy_names_the_script() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_HASH")}
    env.pop("TIDEDESK_STACK", None)
    done = subprocess.run(["docker", "stack", "config", "-c", str(REPO / "docker-stack.yml")],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "swarm/deploy.sh" in done.stderr, done.stderr


def test_bad_stack_names_are_refused(secrets_dir: Path) -> None:
    for bad in ("", "a b", "x" * 40):
        done = subprocess.run([str(REPO / "swarm" / "deploy.sh"), bad], capture_output=True,
                              text=True, timeout=30, check=False,
                              env={**os.environ, "DEPLOY_DRY_RUN": "1",
                                   "TIDEDESK_SECRETS_DIR": str(secrets_dir)})
        assert done.returncode == 2 and done.stderr, (bad, done.stderr)


def test_the_control_plane_learns_the_stack_name_and_the_policies_use_it(
    secrets_dir: Path,
) -> None:
    doc = render("shop-7", secrets_dir)
    env = doc["services"]["controlplane"]["environment"]
    # Swarm expands the template per task from the label `docker stack deploy` sets.
    assert env["TIDEDESK_STACK"] == '{{index .Service.Labels "com.docker.stack.namespace"}}'
    policies = yaml.safe_load((REPO / "swarm" / "policies.yml").read_text())["policies"]
    assert {p["service"] for p in policies} == {"${STACK}_chatnode", "${STACK}_routernode"}


def test_every_service_has_a_healthcheck_and_only_haproxy_publishes(secrets_dir: Path) -> None:
    services = render("shop-7", secrets_dir)["services"]
    assert len(services) == 9
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", f"{name}: no healthcheck"
    # Prometheus and Alertmanager (no auth) and the control plane's API are not published:
    # swarm/local-ports.sh opens them on 127.0.0.1 only.
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"haproxy"}, published
    haproxy = services["haproxy"]
    assert {p["target"] for p in haproxy["ports"]} == {8080, 8443}
    assert haproxy["environment"]["HTTPS_PORT"] == "443"


def test_the_haproxy_healthcheck_command_works(tmp_path: Path, tls_pem: Path) -> None:
    """The stack's HAProxy healthcheck (bash /dev/tcp to the monitor URI) against a real
    HAProxy running haproxy.cfg, and failing once it is gone."""
    from tests.deploy.conftest import require
    from tests.support.processes import free_port, stop_process
    from tests.support.waiting import wait_until

    doc = yaml.safe_load((REPO / "docker-stack.yml").read_text())
    test = doc["services"]["haproxy"]["healthcheck"]["test"]
    stats = free_port()
    command = [c.replace("8404", str(stats)) for c in test[1:]]
    env = {**os.environ, "TIDEDESK_TLS_CERT": str(tls_pem),
           "HAPROXY_HTTP_BIND": f"127.0.0.1:{free_port()}",
           "HAPROXY_HTTPS_BIND": f"127.0.0.1:{free_port()}",
           "HAPROXY_STATS_BIND": f"127.0.0.1:{stats}",
           "HAPROXY_RUNTIME_BIND": f"ipv4@127.0.0.1:{free_port()}",
           "HAPROXY_DNS": "127.0.0.1:9"}
    proc = subprocess.Popen([require("haproxy", "haproxy"), "-db", "-f",
                             str(REPO / "haproxy" / "haproxy.cfg")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until("the healthcheck to pass", lambda: subprocess.run(
            command, timeout=5, check=False).returncode == 0, 15, every=0.2)
    finally:
        stop_process(proc)
    assert subprocess.run(command, timeout=5, check=False,
                          stderr=subprocess.DEVNULL).returncode != 0


def test_the_grafana_override_provisions_the_dashboard(secrets_dir: Path) -> None:
    done = subprocess.run(
        [str(REPO / "swarm" / "deploy.sh"), "shop-7", "-c", str(REPO / "docker-stack.grafana.yml")],
        env={**os.environ, "DEPLOY_DRY_RUN": "1", "TIDEDESK_SECRETS_DIR": str(secrets_dir)},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(done.stdout)
    grafana = doc["services"]["grafana"]
    assert "ports" not in grafana and "healthcheck" in grafana
    targets = {c["source"]: c["target"] for c in grafana["configs"]}
    assert targets["grafana_dashboard_json"] == "/var/lib/grafana/dashboards/tidedesk.json"
    provider = yaml.safe_load(Path(doc["configs"]["grafana_dashboards"]["file"]).read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(Path(doc["configs"]["grafana_datasource"]["file"]).read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert doc["configs"]["grafana_dashboard_json"]["name"].startswith("shop-7_grafana_json-")


def test_the_exporters_override_renders_with_the_stack(secrets_dir: Path) -> None:
    done = subprocess.run(
        [str(REPO / "swarm" / "deploy.sh"), "shop-7", "-c",
         str(REPO / "docker-stack.exporters.yml")],
        env={**os.environ, "DEPLOY_DRY_RUN": "1", "TIDEDESK_SECRETS_DIR": str(secrets_dir)},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"mysqld-exporter", "redis-exporter"} <= set(services)
    assert all("healthcheck" in services[s] for s in ("mysqld-exporter", "redis-exporter"))
    # RabbitMQ's built-in exporter is always on; Prometheus scrapes all three.
    assert "rabbitmq_prometheus" in " ".join(services["rabbitmq"]["entrypoint"])
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    names = {j["job_name"]: j["dns_sd_configs"][0] for j in prom["scrape_configs"]
             if "dns_sd_configs" in j}
    assert names["rabbitmq"]["port"] == 15692
    assert names["mariadb"]["names"] == ["tasks.mysqld-exporter"]
    assert names["redis"]["names"] == ["tasks.redis-exporter"]


def test_placement_for_more_than_one_node(secrets_dir: Path) -> None:
    """Issue 19, two nodes, in the rendered stack: stateful services pinned to the data node,
    HAProxy on every edge node, the control plane on a manager. test_swarm_two_nodes.py deploys
    it on two nodes and sees where the tasks go."""
    services = render("shop-7", secrets_dir)["services"]
    for name in ("mariadb", "rabbitmq", "redis", "prometheus", "alertmanager"):
        deploy = services[name]["deploy"]
        assert deploy["placement"]["constraints"] == ["node.labels.tidedesk.data == true"], name
        assert deploy.get("replicas", 1) == 1
    haproxy = services["haproxy"]["deploy"]
    assert haproxy["mode"] == "global"
    assert haproxy["placement"]["constraints"] == ["node.labels.tidedesk.edge == true"]
    assert services["controlplane"]["deploy"]["placement"]["constraints"] == [
        "node.role == manager"]
    for name in ("chatnode", "routernode"):  # anywhere
        assert "placement" not in services[name]["deploy"], name

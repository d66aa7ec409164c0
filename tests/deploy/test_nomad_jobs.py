"""nomad/: the job files parse as HCL and have the structure Tidedesk needs; the files their
templates render are checked by the real tools (haproxy -c, promtool, amtool, the control
plane's own policy parser, Tidedesk's settings loader).

No Nomad binary runs here, so what `nomad job validate` / `nomad job plan` would add is not
covered: Nomad's own schema (unknown or misspelt attributes), HCL2 functions and variables as
Nomad evaluates them, and consul-template's real rendering. The templates are rendered by a
small stand-in that knows only the constructs these files use (with nomadVar, range
nomadService, env).
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from controlplane.config import hash_token, token_digest
from controlplane.policy_file import parse_policies
from tests.deploy.conftest import REPO, require
from tidedesk.settings import load_settings

NOMAD = REPO / "nomad"
JOB_FILES = sorted(NOMAD.glob("*.nomad.hcl"))
# What a Nomad cluster would hand the templates.
NOMAD_VARS = {
    "nomad/jobs": {"jwt_secret": "j" * 32,
                   "aes_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",  # 32 bytes
                   "db_password": "dbpw", "broker_password": "mqpw",
                   "controlplane_token": "t" * 32, "tls_pem": "(pem)",
                   "controlplane_token_sha256": hash_token("t" * 32)},
    "nomad/jobs/tidedesk-controlplane": {"nomad_token": "nomad-acl-token"},
}
SERVICES = {name: [("10.0.0.11", 21001), ("10.0.0.12", 21002)] for name in (
    "tidedesk-chatnode", "tidedesk-redis", "tidedesk-rabbitmq", "tidedesk-mariadb",
    "tidedesk-prometheus", "tidedesk-alertmanager", "tidedesk-controlplane")}


# --- HCL as plain Python ---------------------------------------------------------------------
def plain(value: Any) -> Any:
    """python-hcl2 keeps quotes and metadata; strip them and turn heredocs into text."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()
                if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str):
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
            heredoc = re.match(r"<<(-?)(\w+)\n(.*)\n\s*\2$", value, re.S)
            if heredoc:
                body = heredoc.group(3)
                return (textwrap.dedent(body) if heredoc.group(1) else body) + "\n"
            return value.replace('\\"', '"')
        return value
    return value


def load_job(path: Path) -> tuple[str, dict[str, Any]]:
    with path.open() as f:
        doc = plain(hcl2.load(f))
    assert len(doc["job"]) == 1, f"{path.name}: one job per file"
    ((name, job),) = doc["job"][0].items()
    return name, job


def groups(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: g for block in job["group"] for name, g in block.items()}


def tasks(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for block in group["task"] for name, t in block.items()}


JOBS = {path.name: load_job(path) for path in JOB_FILES}


def job_named(name: str) -> dict[str, Any]:
    for job_name, job in JOBS.values():
        if job_name == name:
            return job
    raise AssertionError(f"no job {name} in nomad/")


# --- a stand-in for consul-template, for the constructs used here -----------------------------
def render(template: str) -> str:
    text = re.sub(r"\s*\{\{-", "{{", template)
    text = re.sub(r"-\}\}\s*", "}}", text)

    def with_var(m: re.Match[str]) -> str:
        data = NOMAD_VARS[m.group(1)]
        return re.sub(r"\{\{ *\.(\w+) *\}\}", lambda k: data[k.group(1)], m.group(2))

    def each_service(m: re.Match[str]) -> str:
        index, item, name, body = m.groups()
        out = []
        for i, (address, port) in enumerate(SERVICES[name]):
            b = body
            if index:
                b = b.replace(f"{{{{ ${index} }}}}", str(i))
                b = b.replace(f"${item}.Address", ".Address").replace(f"${item}.Port", ".Port")
            b = b.replace("{{ .Address }}", address).replace("{{ .Port }}", str(port))
            out.append(b)
        return "".join(out)

    text = re.sub(r'\{\{ *with nomadVar "([^"]+)" *\}\}(.*?)\{\{ *end *\}\}', with_var, text,
                  flags=re.S)
    text = re.sub(r'\{\{ *range (?:\$(\w+), \$(\w+) := )?nomadService "([^"]+)" *\}\}'
                  r"(.*?)\{\{ *end *\}\}", each_service, text, flags=re.S)
    text = re.sub(r'\{\{ *env "[^"]+" *\}\}', "10.0.0.1", text)
    assert "{{" not in text, f"construct the stand-in does not know: {text[:300]}"
    return text.replace("$${", "${")


def template_for(job: str, group: str, task: str, destination: str) -> str:
    t = tasks(groups(job_named(job))[group])[task]
    for tpl in t["template"]:
        if tpl["destination"] == destination:
            return render(tpl["data"])
    raise AssertionError(f"{job}/{group}/{task} has no template for {destination}")


# --- structure -------------------------------------------------------------------------------
def test_there_is_a_job_per_service() -> None:
    names = {name for name, _ in JOBS.values()}
    assert names == {"tidedesk-chatnode", "tidedesk-router", "tidedesk-controlplane",
                     "tidedesk-haproxy", "tidedesk-infra"}


@pytest.mark.parametrize("file", sorted(JOBS))
def test_every_group_has_a_count_checked_services_and_docker_tasks(file: str) -> None:
    _, job = JOBS[file]
    for gname, group in groups(job).items():
        assert isinstance(group.get("count"), int) and group["count"] >= 1, gname
        services = group.get("service", [])
        assert services, f"{file}/{gname}: no service registered"
        for service in services:
            assert service["provider"] == "nomad", f"{gname}: use Nomad's service discovery"
            assert service.get("check"), f"{file}/{gname}: service {service['name']} unchecked"
        for tname, task in tasks(group).items():
            assert task["driver"] == "docker", f"{gname}/{tname}"


@pytest.mark.parametrize(("job", "group", "low", "high"),
                         [("tidedesk-chatnode", "chatnode", 2, 20),
                          ("tidedesk-router", "router", 1, 12)])
def test_scaled_groups_check_readyz_and_have_bounds(job: str, group: str, low: int,
                                                    high: int) -> None:
    g = groups(job_named(job))[group]
    (scaling,) = g["scaling"]
    assert scaling["enabled"] is True
    assert (scaling["min"], scaling["max"]) == (low, high)
    assert scaling["min"] <= g["count"] <= scaling["max"]
    (check,) = g["service"][0]["check"]
    assert (check["type"], check["path"]) == ("http", "/readyz")


def test_chat_nodes_get_time_to_drain() -> None:
    task = tasks(groups(job_named("tidedesk-chatnode"))["chatnode"])["chatnode"]
    assert task["kill_signal"] == "SIGTERM"
    seconds = int(task["kill_timeout"].rstrip("s"))
    assert seconds >= 30, "reconnect frames over ~3 s plus up to ~20 s of in-flight work"


def test_infra_runs_every_backing_service() -> None:
    assert set(groups(job_named("tidedesk-infra"))) == {
        "redis", "rabbitmq", "mariadb", "prometheus", "alertmanager"}


# --- rendered templates, checked by the real tools ---------------------------------------------
def test_haproxy_template_is_fed_by_nomad_services(tmp_path: Path, tls_pem: Path) -> None:
    cfg = template_for("tidedesk-haproxy", "haproxy", "haproxy", "local/haproxy.cfg")
    assert "server chatnode0 10.0.0.11:21001" in cfg
    assert "server chatnode1 10.0.0.12:21002" in cfg
    (tmp_path / "haproxy.cfg").write_text(cfg.replace("/secrets/tls.pem", str(tls_pem)))
    done = subprocess.run([require("haproxy", "haproxy"), "-dW", "-c", "-f",
                           str(tmp_path / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for needle in ("balance leastconn", "timeout tunnel", "uri /readyz", "slowstart 30s",
                   "ssl-min-ver TLSv1.3", "prometheus-exporter"):
        assert needle in cfg


@pytest.mark.prometheus
def test_prometheus_template_passes_promtool(tmp_path: Path) -> None:
    text = template_for("tidedesk-infra", "prometheus", "prometheus", "local/prometheus.yml")
    config = yaml.safe_load(text)
    config["rule_files"] = [str(p) for p in sorted((REPO / "prometheus" / "rules").glob("*"))]
    # Debian's Prometheus is built without Nomad service discovery (upstream's has it since
    # 2.37): check that block by shape, and everything else with promtool.
    (scrape,) = config["scrape_configs"]
    (sd,) = scrape.pop("nomad_sd_configs")
    assert sd["server"] == "http://10.0.0.1:4646"
    kept = {tuple(r.get("source_labels", [])): r for r in scrape["relabel_configs"]}
    assert kept[("__meta_nomad_tags",)]["action"] == "keep"
    assert kept[("__meta_nomad_tags",)]["regex"] == ".*,metrics,.*"
    scrape["static_configs"] = [{"targets": ["10.0.0.11:21001"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([require("promtool", "prometheus"), "check", "config",
                           str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.prometheus
def test_prometheus_rules_come_from_the_repository() -> None:
    task = tasks(groups(job_named("tidedesk-infra"))["prometheus"])["prometheus"]
    sources = {t["data"] for t in task["template"] if "file(" in t["data"]}
    assert sources == {'${file("prometheus/rules/tidedesk-recording.yml")}',
                       '${file("prometheus/rules/tidedesk-alerts.yml")}'}
    for t in task["template"]:
        if "file(" in t["data"]:
            # The rules' own {{ $labels }} must reach Prometheus untouched.
            assert (t["left_delimiter"], t["right_delimiter"]) == ("[[", "]]")


@pytest.mark.prometheus
def test_alertmanager_template_passes_amtool(tmp_path: Path) -> None:
    text = template_for("tidedesk-infra", "alertmanager", "alertmanager",
                        "local/alertmanager.yml")
    (tmp_path / "alertmanager.yml").write_text(text)
    done = subprocess.run([require("amtool", "prometheus-alertmanager"), "check-config",
                           str(tmp_path / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(text)
    hooks = config["receivers"][0]["webhook_configs"]
    assert hooks[0]["url"] == "http://10.0.0.11:21001/v1/alerts"
    shipped = yaml.safe_load((REPO / "prometheus" / "alertmanager.yml").read_text())
    assert config["inhibit_rules"] == shipped["inhibit_rules"], \
        "nomad/infra.nomad.hcl's Alertmanager must inhibit like prometheus/alertmanager.yml"


def test_controlplane_keeps_only_the_token_hash_and_alertmanager_the_token() -> None:
    secret = template_for("tidedesk-controlplane", "controlplane", "controlplane",
                          "secrets/controlplane_token_sha256")
    task = tasks(groups(job_named("tidedesk-controlplane"))["controlplane"])["controlplane"]
    config = task["config"][0] if isinstance(task["config"], list) else task["config"]
    assert "--token-file=/secrets/controlplane_token_sha256" in config["args"]
    digest, plain = token_digest(secret, "secret")
    assert not plain and digest == token_digest("t" * 32, "token")[0]
    am = template_for("tidedesk-infra", "alertmanager", "alertmanager",
                      "secrets/controlplane_token")
    assert am == "t" * 32


def test_controlplane_policies_parse_and_match_the_jobs() -> None:
    text = template_for("tidedesk-controlplane", "controlplane", "controlplane",
                        "local/policies.yml")
    policies = {p.name: p for p in parse_policies(text)}
    for name, (job, group) in {"chatnode": ("tidedesk-chatnode", "chatnode"),
                               "routernode": ("tidedesk-router", "router")}.items():
        p = policies[name]
        assert (p.driver, p.service, p.group) == ("nomad", job, group)
        (scaling,) = groups(job_named(job))[group]["scaling"]
        assert (p.min, p.max) == (scaling["min"], scaling["max"]), "Nomad would refuse the rest"


@pytest.mark.parametrize(("job", "group", "task"),
                         [("tidedesk-chatnode", "chatnode", "chatnode"),
                          ("tidedesk-router", "router", "router")])
def test_tidedesk_environment_is_accepted_by_the_settings(job: str, group: str,
                                                           task: str) -> None:
    env_text = template_for(job, group, task, "secrets/tidedesk.env")
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    env.update(tasks(groups(job_named(job))[group])[task]["env"][0])
    # What swarm/tidedesk-entrypoint does with the passwords before Tidedesk starts.
    for secret, url in (("TIDEDESK_DATABASE_PASSWORD", "TIDEDESK_DATABASE_URL"),
                        ("TIDEDESK_BROKER_PASSWORD", "TIDEDESK_BROKER_URL")):
        env[url] = env[url].replace("tidedesk@", f"tidedesk:{env.pop(secret)}@", 1)
    assert env["TIDEDESK_REDIS_URL"] == "redis://10.0.0.12:21002/0"  # the last instance wins
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith("TIDEDESK_")})
    assert settings.broker_url and settings.broker_url.startswith("amqp://tidedesk:mqpw@")
    assert os.path.basename(settings.routing_file or "") == "routing.yml"

"""prometheus/: promtool and amtool accept the files, the rule unit tests make every alert fire,
and the Grafana dashboard shows what DESIGN.md lists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO, require

pytestmark = pytest.mark.prometheus

PROM = REPO / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_checks_the_config_with_its_rules(tmp_path: Path) -> None:
    # The shipped file names the rules where the stack mounts them; point it at the repo's.
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(p) for p in RULES]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = run(require("promtool", "prometheus"), "check", "config",
               str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RULES)} rule files found" in done.stdout + done.stderr


def test_promtool_checks_the_rules() -> None:
    done = run(require("promtool", "prometheus"), "check", "rules", *map(str, RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_make_every_alert_fire() -> None:
    test_file = PROM / "tests" / "tidedesk-rules.test.yml"
    done = run(require("promtool", "prometheus"), "test", "rules", test_file.name,
               cwd=test_file.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for f in RULES for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = yaml.safe_load(test_file.read_text())
    fired = {case["alertname"] for t in tested["tests"] for case in t.get("alert_rule_test", [])
             if case["exp_alerts"]}
    assert alerts == fired, f"alerts without a firing test: {sorted(alerts - fired)}"


def test_every_alert_names_its_service() -> None:
    """The control plane evaluates the policies of an alert's `service` label."""
    for f in RULES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                expr = rule["expr"]
                keeps = "service" in rule.get("labels", {}) or re.search(
                    r"by \(service\)|^service:", expr)
                assert keeps, f"{rule['alert']}: no service label on the alert"


def test_every_tidedesk_job_is_found_through_docker_dns() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for name in ("chatnode", "routernode", "controlplane", "haproxy"):
        sd = jobs[name]["dns_sd_configs"][0]
        assert sd["names"] == [f"tasks.{name}"] and sd["type"] == "A"
        relabel = jobs[name]["relabel_configs"]
        assert {"target_label": "service", "replacement": name} in relabel


def test_amtool_checks_the_alertmanager_config() -> None:
    done = run(require("amtool", "prometheus-alertmanager"), "check-config",
               str(PROM / "alertmanager.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    hook = config["receivers"][0]["webhook_configs"][0]
    assert hook["url"].endswith("/v1/alerts")
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials_file"].startswith("/run/secrets/")


def test_grafana_dashboard_shows_the_live_picture() -> None:
    dashboard = json.loads((PROM / "grafana" / "tidedesk.json").read_text())
    panels = {p["title"]: p for p in dashboard["panels"] if p.get("type") != "row"}
    for title in ("Connections", "Messages per second", "P99 latency", "Errors",
                  "Replicas: current vs desired", "Waiting visitors"):
        assert title in panels, f"dashboard lacks {title!r}"
    exprs = " ".join(t["expr"] for p in panels.values() for t in p.get("targets", []))
    for metric in ("tidedesk_connections", "tidedesk_messages_in",
                   "tidedesk_delivery_latency_seconds", "tidedesk_http_errors",
                   "tidedesk_controlplane_replicas_current",
                   "tidedesk_controlplane_replicas_desired", "tidedesk_waiting_visitors"):
        assert metric in exprs, f"no panel queries {metric}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

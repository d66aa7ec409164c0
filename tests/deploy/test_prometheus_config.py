"""prometheus/: promtool and amtool accept the files, the rule unit tests make every alert fire
and keep every alert silent on healthy series, every alert says what to do, and the Grafana
dashboard shows what DESIGN.md lists from series that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from tests.deploy.conftest import REPO, require

pytestmark = pytest.mark.prometheus

PROM = REPO / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = PROM / "tests" / "tidedesk-rules.test.yml"
DASHBOARD = PROM / "grafana" / "tidedesk.json"

# Severities prometheus/alertmanager.yml knows (its inhibit rule matches on them).
SEVERITIES = {"warning", "critical"}

# Series that do not come from tidedesk/metrics.py or controlplane/telemetry.py: Prometheus's
# own `up`, prometheus_client's process collector, HAProxy's built-in exporter.
EXTERNAL_SERIES = {"up", "process_cpu_seconds_total", "haproxy_server_status"}

# How each metric type of prometheus_client is exposed (Counter names lose `_total` in
# describe()).
SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",),
                   "histogram": ("_bucket", "_sum", "_count")}

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                "and", "or", "unless", "inf", "nan"}


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


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of prometheus/rules/ of that kind ("alert" or "record")."""
    return [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"]
            for r in g["rules"] if kind in r]


def alert_cases() -> list[tuple[int, dict[str, Any]]]:
    """(test group index, alert_rule_test case) of the promtool unit tests."""
    tested = yaml.safe_load(RULE_TESTS.read_text())
    return [(i, case) for i, t in enumerate(tested["tests"])
            for case in t.get("alert_rule_test", [])]


def test_rule_unit_tests_make_every_alert_fire() -> None:
    done = run(require("promtool", "prometheus"), "test", "rules", RULE_TESTS.name,
               cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for r in rules("alert")}
    fired = {case["alertname"] for _, case in alert_cases() if case["exp_alerts"]}
    assert alerts == fired, f"alerts without a firing test: {sorted(alerts - fired)}"


def test_rule_unit_tests_show_a_healthy_cluster_raises_no_alert() -> None:
    """One test group (healthy traffic) asserts that every alert stays silent."""
    alerts = {r["alert"] for r in rules("alert")}
    silent: dict[int, set[str]] = {}
    for group, case in alert_cases():
        if not case["exp_alerts"]:
            silent.setdefault(group, set()).add(case["alertname"])
    missing = min((alerts - names for names in silent.values()), key=len, default=alerts)
    assert not missing, f"no healthy test group shows these alerts silent: {sorted(missing)}"


def test_every_alert_names_its_service() -> None:
    """The control plane evaluates the policies of an alert's `service` label."""
    for rule in rules("record"):
        assert re.search(r"by \([^)]*\bservice\b", rule["expr"]), \
            f"{rule['record']}: recording rules must keep the service label"
    for rule in rules("alert"):
        expr = rule["expr"]
        keeps = "service" in rule.get("labels", {}) or re.search(
            r"by \([^)]*\bservice\b|^[a-z_]+:", expr)
        assert keeps, f"{rule['alert']}: no service label on the alert"
    # And where promtool made them fire, the label is there.
    for _, case in alert_cases():
        for alert in case["exp_alerts"]:
            assert "service" in alert["exp_labels"], f"{case['alertname']}: fired without service"


def test_every_alert_says_what_is_wrong_and_what_to_do() -> None:
    for rule in rules("alert"):
        name = rule["alert"]
        assert rule["labels"].get("severity") in SEVERITIES, \
            f"{name}: severity must be one of {sorted(SEVERITIES)} (alertmanager.yml routes them)"
        notes = rule.get("annotations", {})
        assert notes.get("summary"), f"{name}: no summary (what is wrong)"
        assert len(notes.get("description", "")) > 40, f"{name}: no description (what to do)"
    documented = (REPO / "docs" / "observability.md").read_text()
    undocumented = sorted(r["alert"] for r in rules("alert") if r["alert"] not in documented)
    assert not undocumented, f"docs/observability.md does not list {undocumented}"
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    for inhibit in config.get("inhibit_rules", []):
        for matcher in inhibit.get("source_matchers", []) + inhibit.get("target_matchers", []):
            key, _, value = matcher.partition("=")
            if key == "severity":
                assert value.strip('"') in SEVERITIES, f"alertmanager.yml matches {matcher}"


def test_every_alert_is_routed_to_the_control_plane_and_to_people(tmp_path: Path) -> None:
    """amtool routes the label set of every alert the unit tests fire to both receivers."""
    config = rendered_alertmanager(tmp_path, **PAGING)
    label_sets = {tuple(sorted({"alertname": case["alertname"], **alert["exp_labels"]}.items()))
                  for _, case in alert_cases() for alert in case["exp_alerts"]}
    amtool = require("amtool", "prometheus-alertmanager")
    for labels in sorted(label_sets):
        done = run(amtool, "config", "routes", "test",
                   f"--config.file={config}",
                   "--verify.receivers=controlplane,people", *(f"{k}={v}" for k, v in labels))
        assert done.returncode == 0, f"{dict(labels)}: {done.stdout}{done.stderr}"


def test_every_tidedesk_job_is_found_through_docker_dns() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for name in ("chatnode", "routernode", "controlplane", "haproxy"):
        sd = jobs[name]["dns_sd_configs"][0]
        assert sd["names"] == [f"tasks.{name}"] and sd["type"] == "A"
        relabel = jobs[name]["relabel_configs"]
        assert {"target_label": "service", "replacement": name} in relabel


def rendered_alertmanager(tmp: Path, **paging: str) -> Path:
    """prometheus/alertmanager.yml as swarm/deploy.sh renders it (swarm/render-alertmanager.sh)."""
    import os

    out = tmp / "alertmanager.yml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERT_")}
    done = subprocess.run([str(REPO / "swarm" / "render-alertmanager.sh"),
                           str(PROM / "alertmanager.yml"), str(out)], env={**env, **paging},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return out


PAGING = {"ALERT_EMAIL_TO": "ops@shop.test", "ALERT_SMTP_SMARTHOST": "smtp.shop.test:587",
          "ALERT_SMTP_USERNAME": "alerts", "ALERT_WEBHOOK_URL": "https://hooks.shop.test/page"}


def test_amtool_checks_the_alertmanager_config(tmp_path: Path) -> None:
    amtool = require("amtool", "prometheus-alertmanager")
    for paging in ({}, PAGING, {"ALERT_WEBHOOK_URL": "http://hook.test/x"}):
        (tmp_path / str(len(paging))).mkdir()
        path = rendered_alertmanager(tmp_path / str(len(paging)), **paging)
        done = run(amtool, "check-config", str(path))
        assert done.returncode == 0, (paging, done.stdout + done.stderr)
    people = {r["name"]: r for r in yaml.safe_load(path.read_text())["receivers"]}["people"]
    assert "email_configs" not in people and people["webhook_configs"][0]["url"] == \
        "http://hook.test/x"
    config = yaml.safe_load(rendered_alertmanager(tmp_path, **PAGING).read_text())
    people = {r["name"]: r for r in config["receivers"]}["people"]
    assert people["email_configs"][0]["to"] == "ops@shop.test"
    assert config["global"]["smtp_auth_password_file"].startswith("/run/secrets/")
    hook = config["receivers"][0]["webhook_configs"][0]
    assert hook["url"].endswith("/v1/alerts")
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials_file"].startswith("/run/secrets/")


def test_grafana_dashboard_shows_the_live_picture() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
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


def known_series() -> set[str]:
    """Series names the processes export, the recording rules, and the external ones."""
    from controlplane.telemetry import Telemetry
    from tidedesk import metrics

    families = [f for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)
                for f in m.describe()]
    families += list(Telemetry().registry.collect())
    names = {f.name + suffix for f in families for suffix in SERIES_SUFFIXES[f.type]}
    return names | {r["record"] for r in rules("record")} | EXTERNAL_SERIES


def referenced_series(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, keywords and labels left out)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (label_replace arguments)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {w for w in words if w.lower() not in PROMQL_WORDS}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of the dashboard, annotations included."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [(f"annotation {a['name']}", a["expr"])
              for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    return exprs


def test_reference_check_catches_a_typo() -> None:
    known = known_series()
    assert referenced_series(
        'histogram_quantile(0.99, sum by (le) (rate(tidedesk_db_write_seconds_bucket[5m])))'
    ) == {"tidedesk_db_write_seconds_bucket"}
    assert referenced_series('max by (pool) (x:y:z{pool=~"a|b"}) * 60 > bool 1e3') == {"x:y:z"}
    assert referenced_series("rate(tidedesk_mesages_in_total[1m])") - known == {
        "tidedesk_mesages_in_total"}


def test_grafana_dashboard_reads_series_that_exist(tmp_path: Path) -> None:
    known = known_series()
    for title, expr in dashboard_exprs():
        unknown = referenced_series(expr) - known
        assert not unknown, (f"panel {title!r} queries {sorted(unknown)}: not in tidedesk/"
                             "metrics.py, controlplane/telemetry.py nor the recording rules")
    # promtool parses each expression (as a recording rule), so a syntax slip fails here too.
    records = [{"record": f"dashboard:query:{i}", "expr": expr}
               for i, (_, expr) in enumerate(dashboard_exprs())]
    check = tmp_path / "dashboard.yml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = run(require("promtool", "prometheus"), "check", "rules", str(check))
    names = "\n".join(f"dashboard:query:{i} = {title!r}: {expr}"
                      for i, (title, expr) in enumerate(dashboard_exprs()))
    assert done.returncode == 0, done.stdout + done.stderr + names


def test_grafana_dashboard_shows_the_delivery_pipeline_and_history() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in dashboard["panels"] if p.get("type") != "row"}
    wanted = {
        "End-to-end latency": ("service:tidedesk_delivery_latency_seconds:p50_5m",
                               "service:tidedesk_delivery_latency_seconds:p99_5m"),
        "Publish-confirm latency": ("queue:tidedesk_publish_confirm_seconds:p99_5m",),
        "Messages per second": ("tidedesk_messages_in_total", "tidedesk_messages_out_total",
                                "tidedesk_messages_stored_total"),
        "Rejected envelopes and failures": ("queue:tidedesk_envelopes_rejected:increase10m",),
        "Waiting visitors": ("tidedesk_waiting_visitors",),
        "Assignments per pool": ("pool:tidedesk_assignments:rate5m",),
        "History batch size": ("tidedesk_router_batch_size_bucket",
                               "service:tidedesk_router_batch_size:avg_rate5m"),
        "History write latency": ("tidedesk_db_write_seconds_bucket",
                                  "service:tidedesk_db_write_seconds:p99_5m"),
    }
    for title, series in wanted.items():
        assert title in panels, f"dashboard lacks {title!r}"
        read = set().union(*(referenced_series(t["expr"]) for t in panels[title]["targets"]))
        assert set(series) <= read, f"{title!r} does not query {sorted(set(series) - read)}"
    rows = [p for p in dashboard["panels"] if p.get("type") != "row"]
    spots = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in rows]
    assert len(spots) == len(set(spots)), "two panels share a place on the grid"

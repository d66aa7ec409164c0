"""A Prometheus rule fires, the real Alertmanager posts to the daemon, an evaluation runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cp_nomad_double import NomadDouble
from cp_servers import ALERT_SERVICE, TOKEN, Alertmanager, Daemon, Exporter, Prometheus

from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

POLICY = f"""
policies:
  - name: backlog
    service: tidedesk_{ALERT_SERVICE}   # a stack-prefixed Swarm-style name: the label matches
    driver: nomad
    group: g
    min: 1
    max: 6
    interval: 1h                        # no scheduled run during the test: only the alert's
    warmup: 0s
    scale_up_wait: 0s
    step: {{up_max_percent: 500}}
    checks:
      - name: load
        query: sum(tidedesk_cptest_load{{case="alert"}})
        target: 10
        for: 0s
"""


@pytest.fixture()
def alerting(
    tmp_path: Path, prometheus: Prometheus, exporter: Exporter, alertmanager_port: int
) -> Iterator[tuple[Daemon, NomadDouble]]:
    exporter.set("alert", 0)
    prometheus.wait_for('sum(tidedesk_cptest_load{case="alert"})', 0)
    double = NomadDouble().start()
    double.add_job(f"tidedesk_{ALERT_SERVICE}", {"g": 1})
    port = free_port()
    am = Alertmanager(tmp_path, alertmanager_port, f"http://127.0.0.1:{port}/v1/alerts", TOKEN)
    d = Daemon(tmp_path, POLICY, prometheus.url, double.address, port=port)
    try:
        yield d, double
    finally:
        d.stop()
        am.stop()
        double.stop()
        exporter.set("alert", 0)


def test_firing_alert_triggers_an_evaluation(
    alerting: tuple[Daemon, NomadDouble], exporter: Exporter
) -> None:
    d, double = alerting
    wait_until("the start-up evaluation", lambda: len(d.decisions("backlog")) == 1, 10)
    assert double.count(f"tidedesk_{ALERT_SERVICE}", "g") == 1
    exporter.set("alert", 55)  # the rule fires above 50; the check wants ceil(55 / 10) = 6
    try:
        wait_until(
            "the alert's scale-up", lambda: double.count(f"tidedesk_{ALERT_SERVICE}", "g") == 6, 45
        )
    except AssertionError as exc:
        seen = [(x["trigger"], x["reason"]) for x in d.decisions("backlog")]
        raise AssertionError(f"{exc}; decisions: {seen}; log: {d.log_path}") from None
    latest = d.decisions("backlog", 1)[0]
    assert latest["trigger"] == "alert:CpTestBacklog" and latest["direction"] == "up"
    alerts = d.status("backlog")["alerts"]
    assert alerts and alerts[0]["alertname"] == "CpTestBacklog"
    assert alerts[0]["labels"]["service"] == ALERT_SERVICE
    assert any(a["who"] == "alertmanager" for a in d.audit())

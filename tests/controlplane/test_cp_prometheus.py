"""The metrics source against a real Prometheus scraping the test's exporter."""

from __future__ import annotations

import itertools
import time

import pytest
from cp_servers import Exporter, Prometheus

from controlplane.metrics_source import PrometheusSource
from controlplane.policy import Check, Policy
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.prometheus


def policy(*checks: Check, window: float = 5) -> Policy:
    return Policy(
        name="p", service="s", driver="swarm", min=1, max=5, checks=checks, interval_s=1,
        scale_down_stabilization_s=window,
    )  # fmt: skip


def test_reads_the_exporter_through_prometheus(
    prometheus: Prometheus, exporter: Exporter
) -> None:
    exporter.set("src", 42)
    prometheus.wait_for('sum(tidedesk_cptest_load{case="src"})', 42)
    source = PrometheusSource(prometheus.url)
    p = policy(Check("load", 'sum(tidedesk_cptest_load{case="src"})', for_s=2, target=10))
    # A couple of samples in the window, so the order below is checked on more than one.
    wait_until("two samples of the load",
               lambda: len(source.fetch(p, time.time()).samples.get("load") or ()) >= 2, 10)
    fetch = source.fetch(p, time.time())
    assert fetch.errors == {}
    series = fetch.samples["load"]
    assert series and series[-1].value == 42
    assert all(a.t < b.t for a, b in itertools.pairwise(series))


def test_errors_are_reported_not_raised(prometheus: Prometheus, exporter: Exporter) -> None:
    exporter.set("a", 1)
    exporter.set("b", 2)
    prometheus.wait_for('count(tidedesk_cptest_load{case=~"a|b"})', 2)
    time.sleep(1.5)  # range queries end on a whole second
    checks = (
        Check("many", 'tidedesk_cptest_load{case=~"a|b"}', target=1),
        Check("broken", "sum(rate(", target=1),
        Check("absent", 'sum(tidedesk_cptest_load{case="never"})', target=1),
    )
    fetch = PrometheusSource(prometheus.url).fetch(policy(*checks), time.time())
    assert "aggregate it to one" in fetch.errors["many"]
    assert "prometheus query failed" in fetch.errors["broken"]
    assert fetch.samples["absent"] == [] and "absent" not in fetch.errors


def test_prometheus_down_fails_fast() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    started = time.monotonic()
    fetch = source.fetch(policy(Check("x", "up", target=1)), time.time())
    assert time.monotonic() - started < 3
    assert "prometheus query failed" in fetch.errors["x"] and fetch.samples == {}

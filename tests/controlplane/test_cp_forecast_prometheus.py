"""Predictive pre-scaling reads its history from a real Prometheus.

A week of a daily pattern is backfilled with ``promtool tsdb create-blocks-from openmetrics``
(Debian's prometheus package ships promtool) into a fresh data directory; Prometheus then serves
it through ``query_range`` like any scraped history. The pattern has a daily rise two minutes
from "now": the controller must raise the count before it comes, while the reactive check alone
holds.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cp_nomad_double import NomadDouble
from cp_servers import Prometheus

from controlplane.controller import Controller
from controlplane.memory_source import MemorySource
from controlplane.metrics_source import PrometheusSource, history_step
from controlplane.nomad_target import NomadTarget
from controlplane.policy import Check, Policy, Predictive
from controlplane.state import ControlPlaneState
from controlplane.telemetry import Telemetry
from tests.support.processes import free_port

pytestmark = pytest.mark.prometheus

DAY = 86400
NOW = time.time()
RISE_AT = NOW + 120  # every day at this time of day the load jumps from 200 to 1000 for 30 min
QUERY = 'sum(tidedesk_cptest_history{case="forecast"})'


def load_at(t: float) -> float:
    since = (t - RISE_AT) % DAY
    wobble = 1 + 0.03 * math.sin(t / 600)  # a little weather, so the error is not zero
    return (1000.0 if since < 1800 else 200.0) * wobble


def history_points() -> list[tuple[int, float]]:
    """Eight days at one point a minute, ending 30 s before NOW (values as backfilled)."""
    start = int(NOW - 8 * DAY) // 60 * 60
    return [(t, round(load_at(t), 2)) for t in range(start, int(NOW) - 30, 60)]


@pytest.fixture(scope="module")
def history_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install Debian's prometheus package")
    work = tmp_path_factory.mktemp("prom-history")
    lines = ["# TYPE tidedesk_cptest_history gauge"]
    for t, v in history_points():
        lines.append(f'tidedesk_cptest_history{{case="forecast"}} {v:.2f} {t}')
    lines.append("# EOF")
    source = work / "history.om"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
         str(source), str(work / "data")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    p = Prometheus(work, free_port(), free_port())
    yield p
    p.stop()


def policy() -> Policy:
    return Policy(
        name="router", service="router", driver="nomad", group="g", min=1, max=12,
        checks=(Check("load", QUERY, for_s=0, target=100),), interval_s=15, warmup_s=0,
        scale_down_stabilization_s=60, strategy="proportional",
        predictive=Predictive(check="load", lookback_s=7 * DAY, margin=0.1, startup_s=180),
    )  # fmt: skip


def test_history_comes_back_through_query_range(history_prometheus: Prometheus) -> None:
    source = PrometheusSource(history_prometheus.url)
    step = history_step(7 * DAY)
    series = source.series(QUERY, NOW - 7 * DAY, NOW, step)
    assert step == 120 and len(series) > 0.95 * 7 * DAY / step
    assert series[-1].t > NOW - 600
    assert max(s.value for s in series) > 900 and min(s.value for s in series) < 250


@pytest.mark.parametrize("step", [60.0, 120.0, 45.0])
def test_the_memory_source_answers_as_prometheus_does(
    history_prometheus: Prometheus, step: float
) -> None:
    """The in-memory source's contract is Prometheus's query_range on the same samples."""
    memory = MemorySource()
    for t, v in history_points():
        memory.record(QUERY, t, v)
    real = PrometheusSource(history_prometheus.url)
    start, end = NOW - 2 * DAY + 7, NOW
    want = [(s.t, round(s.value, 2)) for s in real.series(QUERY, start, end, step)]
    got = [(s.t, round(s.value, 2)) for s in memory.series(QUERY, start, end, step)]
    assert len(want) > DAY / step and got == want
    assert real.series("sum(nothing_here)", start, end, step) == []
    assert memory.series("sum(nothing_here)", start, end, step) == []


def test_the_forecast_raises_the_count_before_the_daily_rise(
    history_prometheus: Prometheus, nomad_double: NomadDouble
) -> None:
    nomad_double.add_job("router", {"g": 2})
    p = policy()
    state = ControlPlaneState([p])
    telemetry = Telemetry()
    controller = Controller(
        state, PrometheusSource(history_prometheus.url),
        {"nomad": NomadTarget(nomad_double.address)}, telemetry, clock=lambda: NOW,
    )  # fmt: skip
    entry = controller.evaluate("router")
    assert entry is not None, state.status_of("router", NOW)["last_error"]
    # reactive: 200 now wants 2; the forecast sees 1000 two minutes ahead: ceil(1000*1.1/100)
    assert entry["desired"] >= 11 and nomad_double.count("router", "g") == entry["desired"]
    assert "forecast floor" in entry["reason"]
    assert entry["checks"][0]["vote"] == "hold" and entry["checks"][0]["wanted"] == 2
    st = state.status_of("router", NOW)
    assert st["floors"]["forecast"]["replicas"] >= 11
    fc = st["forecast"]
    assert 0 < fc["error_ratio"] < 0.1 and 0.9 < fc["level"] < 1.1
    assert fc["hold_s"] == 60 and 0 < fc["peak_in_s"] <= fc["lead_s"] + fc["hold_s"]
    text = telemetry.render().decode()
    assert 'tidedesk_controlplane_forecast_error_ratio{policy="router"}' in text
    assert 'tidedesk_controlplane_floor_replicas{policy="router",source="forecast"}' in text


class CountingSource(PrometheusSource):
    """The real Prometheus source, counting its range queries."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.range_queries = 0

    def series(self, *args: Any, **kwargs: Any) -> Any:
        self.range_queries += 1
        return super().series(*args, **kwargs)


def test_the_forecast_reads_history_once_per_refresh_and_the_last_hour_once_a_minute(
    history_prometheus: Prometheus, nomad_double: NomadDouble
) -> None:
    nomad_double.add_job("router", {"g": 2})
    state = ControlPlaneState([policy()])
    now = [NOW]
    source = CountingSource(history_prometheus.url)
    controller = Controller(
        state, source, {"nomad": NomadTarget(nomad_double.address)}, Telemetry(),
        clock=lambda: now[0],
    )  # fmt: skip
    counts = []
    for t in (0, 15, 30, 45, 60, 75):  # evaluations every 15 s
        now[0] = NOW + t
        assert controller.evaluate("router") is not None
        counts.append(source.range_queries)
    # Each evaluation reads its check (1). The forecast adds the model and the last hour at
    # first (2), then the last hour again only at +60 s (1).
    assert counts == [3, 4, 5, 6, 8, 9]
    assert state.status_of("router", NOW + 75)["floors"]["forecast"]["replicas"] >= 11


def test_without_history_there_is_no_forecast_floor(
    prometheus: Prometheus, nomad_double: NomadDouble
) -> None:
    """A Prometheus without the series: the reactive decision alone, and the status says why."""
    nomad_double.add_job("router", {"g": 3})
    state = ControlPlaneState([policy()])
    controller = Controller(
        state, PrometheusSource(prometheus.url), {"nomad": NomadTarget(nomad_double.address)},
        Telemetry(), clock=lambda: NOW,
    )  # fmt: skip
    entry = controller.evaluate("router")
    assert entry is not None and entry["desired"] == 3 and "no data" in entry["reason"]
    assert "not enough history" in state.status_of("router", NOW)["forecast"]["error"]

"""The in-memory seams the simulator hands the controller: MemorySource and MemoryTarget.

Their agreement with Prometheus is checked in test_cp_forecast_prometheus.py (same samples,
same query_range answer); here, the parts a Prometheus cannot show: ordering, failures, the
target's replica bookkeeping, and the real Controller driven over both with a manual clock.
"""

from __future__ import annotations

import pytest

from controlplane.clock import ManualClock
from controlplane.controller import Controller
from controlplane.decision import Sample
from controlplane.memory_source import MemorySource
from controlplane.memory_target import MemoryTarget
from controlplane.policy import Check, Policy
from controlplane.state import ControlPlaneState
from controlplane.telemetry import Telemetry


def policy() -> Policy:
    return Policy(
        name="p", service="s", driver="swarm", min=1, max=10, interval_s=15, warmup_s=0,
        scale_down_stabilization_s=60, strategy="proportional",
        checks=(Check("load", "sum(load)", for_s=0, target=100),),
    )  # fmt: skip


def test_series_holds_each_sample_until_the_next() -> None:
    m = MemorySource()
    m.record("q", 10, 1.0)
    m.record("q", 20, 2.0)
    m.record("q", 20, 3.0)  # same time: replaces
    assert m.series("q", 0, 30, 5) == [
        Sample(10, 1.0), Sample(15, 1.0), Sample(20, 3.0), Sample(25, 3.0), Sample(30, 3.0)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="older than the last one"):
        m.record("q", 5, 0.0)


def test_a_failing_query_is_an_error_of_its_check_only() -> None:
    m = MemorySource()
    m.record("sum(load)", 0, 50)
    m.fail("sum(load)", "parse error")
    fetch = m.fetch(policy(), 100)
    assert "prometheus query failed: parse error" in fetch.errors["load"]
    assert fetch.samples == {}


def test_target_adds_at_the_clock_and_removes_the_newest() -> None:
    clock = ManualClock(100)
    t = MemoryTarget(clock, [0, 50], startup_delay_s=30)
    clock.now = 200
    assert t.scale(policy(), 4, "up").applied
    assert t.read(policy()).started_at == (0, 50, 200, 200)
    assert t.ready(229) == 2 and t.ready(230) == 4
    t.scale(policy(), 1, "down")
    assert t.read(policy()).started_at == (0,) and t.replicas == 1


def test_the_controller_runs_over_the_memory_seams() -> None:
    clock = ManualClock(1000)
    metrics = MemorySource()
    metrics.record("sum(load)", 0, 450)
    target = MemoryTarget(clock, [0, 0])
    p = policy()
    controller = Controller(ControlPlaneState([p]), metrics, {"swarm": target}, Telemetry(), clock)
    entry = controller.evaluate("p")
    assert entry is not None and entry["outcome"] == "scaled" and entry["desired"] == 5
    assert target.read(p).started_at[-1] == 1000

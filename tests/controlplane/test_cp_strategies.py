"""Flash-sale strategies: proportional scale-up, scheduled floors, predictive floors.

Tables of named cases through one helper, then hypothesis properties."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cp_decision import LATENCY, NOW, replicas, steady
from test_cp_decision import policy as decision_policy

from controlplane.decision import Action, Floor, History, Pin, ReplicaState, Sample, decide
from controlplane.floors import planned_floors
from controlplane.forecast import DAY_S, SeasonalModel, forecast
from controlplane.policy import Check, Policy, Predictive, UpPolicy
from controlplane.schedule import ScheduledEvent, scheduled_floor

TARGET = Check(name="conns", query="sum(conns)", for_s=30, target=100)


def policy(**kw: Any) -> Policy:
    return decision_policy(**{"max": 60, "checks": (TARGET,), "strategy": "proportional", **kw})


@dataclass
class Case:
    name: str
    current: ReplicaState
    load: float | None
    expect: int
    policy: Policy = field(default_factory=policy)
    history: History = field(default_factory=History)
    floors: tuple[Floor, ...] = ()
    reason_has: str = ""


FLOOR12 = Floor(12, "schedule", "scheduled event sale (starts in 300s)")
CASES = [
    Case("proportional jumps to ceil(total/target) within the bound", replicas(8), 1500, 15),
    Case("proportional is bounded by +100%", replicas(5), 3000, 10,
         reason_has="up-policy: at most +5 from 5 per 15s"),
    Case("proportional: +4 replicas when that beats +100%", replicas(2), 3000, 6),
    Case("proportional ignores scale_up_wait", replicas(10), 2000, 20,
         history=History(actions=(Action(NOW - 30, 5, 10),), autoscaled=10)),
    Case("proportional: the period's budget is shared", replicas(10), 3000, 10,
         history=History(actions=(Action(NOW - 5, 5, 10),), autoscaled=10),
         reason_has="up-policy"),
    Case("step strategy keeps +20 % and the wait", replicas(10), 2000, 12,
         policy=policy(strategy="step")),
    Case("a check may choose step in a proportional policy", replicas(10), 2000, 12,
         policy=policy(checks=(dataclasses.replace(TARGET, strategy="step"),))),
    Case("dead band holds for proportional", replicas(10), 1050, 10),
    Case("scale-down stays one step", replicas(10), 200, 9),
    Case("a scheduled floor raises the count at once", replicas(4), 400, 12, floors=(FLOOR12,),
         reason_has="schedule floor 12"),
    Case("a floor below the reactive answer changes nothing", replicas(10), 2000, 20,
         floors=(Floor(6, "forecast", "f"),)),
    Case("a floor stops a scale-down", replicas(12), 100, 12, floors=(FLOOR12,)),
    Case("a floor is clamped to max", replicas(4), 400, 60,
         floors=(Floor(99, "forecast", "f"),)),
    Case("the highest floor wins", replicas(4), 400, 15,
         floors=(FLOOR12, Floor(15, "forecast", "f"))),
    Case("a pin stands above floors", replicas(4), 400, 3, floors=(FLOOR12,),
         history=History(pin=Pin(3, NOW + 60, "alice"))),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_strategy_table(case: Case) -> None:
    samples = {} if case.load is None else {"conns": steady(case.load)}
    d = decide(case.current, samples, case.policy, case.history, NOW, case.floors)
    assert d.desired == case.expect, d.reason
    assert case.reason_has in d.reason


def test_scheduled_floor_window() -> None:
    e = ScheduledEvent("sale", start=NOW, end=NOW + 3600, lead_s=600, replicas=(("chat", 12),))
    other = ScheduledEvent("x", NOW, NOW + 60, 0, (("router", 3),))
    cases = [
        ("before the lead time", NOW - 601, None),
        ("at start minus lead", NOW - 600, 12),
        ("during", NOW + 1800, 12),
        ("at the end it is released", NOW + 3600, None),
    ]
    for name, at, want in cases:
        got = scheduled_floor([e, other], "chat", at)
        assert (None if got is None else got.replicas) == want, name


# --- properties -------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    st.floats(-7200, 7200), st.floats(1, 7200), st.floats(0, 3600), st.integers(0, 40),
    st.integers(0, 40),
)  # fmt: skip
def test_a_schedule_holds_from_start_minus_lead_until_the_end(
    start: float, length: float, lead: float, floor: int, n: int
) -> None:
    event = ScheduledEvent("e", NOW + start, NOW + start + length, lead, (("chat", floor),))
    active = NOW + start - lead <= NOW < NOW + start + length
    got = scheduled_floor([event], "chat", NOW)
    assert (got is not None) == active
    pol = policy(min=0, max=40)
    d = decide(replicas(n), {}, pol, History(autoscaled=n), NOW,
               () if got is None else (Floor(got.replicas, "schedule", "e"),))  # fmt: skip
    assert d.desired == (max(floor, n) if active else n)  # no data: the floor alone moves it



@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 40),
    st.floats(0, 20000),
    st.floats(1, 300),
    st.integers(1, 8),
    st.lists(st.tuples(st.floats(0.1, 60), st.integers(0, 40)), max_size=4),
)
def test_proportional_never_exceeds_its_period_bound(
    n: int, load: float, pct: float, reps: int, past: list[tuple[float, int]]
) -> None:
    up = UpPolicy(percent=pct, replicas=reps, period_s=15)
    pol = policy(min=0, max=200, up_policy=up)
    acts, prev = [], n
    for ago, to in sorted(past, reverse=True):
        acts.append(Action(NOW - ago, prev, to))
        prev = to
    cur = prev
    d = decide(replicas(cur), {"conns": steady(load)}, pol, History(tuple(acts), cur), NOW)
    inside = [a for a in acts if a.at > NOW - up.period_s]
    start = inside[0].previous if inside else cur
    assert d.desired <= max(cur, start + up.limit(start)) or d.desired == pol.min


situation = st.tuples(
    st.integers(0, 10), st.integers(10, 60), st.integers(0, 60), st.floats(0, 8000),
    st.lists(st.tuples(st.integers(0, 99), st.sampled_from(["schedule", "forecast"])),
             max_size=3),
    st.sampled_from(["step", "proportional"]),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(situation)
def test_floors_never_lower_and_nothing_leaves_min_max(s: Any) -> None:
    lo, hi, n, load, raw_floors, strategy = s
    pol = policy(min=lo, max=hi, strategy=strategy, checks=(TARGET, LATENCY))
    floors = tuple(Floor(r, src, "why") for r, src in raw_floors)
    samples = {"conns": steady(load), "p99": steady(0.3)}
    hist = History(autoscaled=n)
    reactive = decide(replicas(n), samples, pol, hist, NOW)
    lifted = decide(replicas(n), samples, pol, hist, NOW, floors)
    assert lifted.desired >= reactive.desired  # prediction/schedule never lowers the decision
    assert lo <= reactive.desired <= hi and lo <= lifted.desired <= hi


# --- the forecast -----------------------------------------------------------------------------
def daily_shape(t: float) -> float:
    hour = (t % DAY_S) / 3600
    return 100 + 400 * max(0.0, 1 - abs(hour - 14) / 6)  # 100 at night, 500 at 14:00


def test_forecast_sees_the_daily_rise_ahead() -> None:
    now = 20 * DAY_S + 9 * 3600  # 09:00, the morning ramp
    history = [Sample(t, daily_shape(t)) for t in range(int(now - 7 * DAY_S), int(now) + 1, 60)]
    model = SeasonalModel(history, 60)
    recent = [s for s in history if s.t > now - 3600]
    fc = forecast(model, recent, now, 600)
    assert fc is not None
    assert fc.peak == pytest.approx(daily_shape(now + 600), rel=0.01)
    assert fc.peak > daily_shape(now)  # the rise is seen before it happens
    assert fc.error == pytest.approx(0, abs=0.01) and fc.level == pytest.approx(1, abs=0.01)
    # a day 50 % busier than usual lifts the level; the error shows the misfit of the season
    busy = [Sample(s.t, 1.5 * s.value) for s in recent]
    fc2 = forecast(model, busy, now, 600)
    assert fc2 is not None and fc2.level == pytest.approx(1.5, rel=0.01)
    assert fc2.peak == pytest.approx(1.5 * daily_shape(now + 600), rel=0.02)
    # no history at all: no forecast (and so no floor)
    assert forecast(SeasonalModel([], 60), recent, now, 600) is None


def test_forecast_never_reads_the_future() -> None:
    now = 10 * DAY_S
    # the history object holds a spike tomorrow; the forecast for the next minutes ignores it
    history = [Sample(t, 100.0) for t in range(int(now - 3 * DAY_S), int(now + DAY_S), 60)]
    history.append(Sample(now + 600 - 0 * DAY_S, 10_000.0))
    fc = forecast(SeasonalModel(history, 60), [], now, 900)
    assert fc is not None and fc.peak == pytest.approx(100.0)


def test_planned_floors_combine_schedule_and_forecast() -> None:
    now = 20 * DAY_S + 9 * 3600
    history = [Sample(t, daily_shape(t)) for t in range(int(now - 7 * DAY_S), int(now) + 1, 60)]
    pol = policy(predictive=Predictive(check="conns", margin=0.1, startup_s=30))
    event = ScheduledEvent("sale", now + 100, now + 3700, 300, (("chat", 30),))
    planned = planned_floors(pol, [event], SeasonalModel(history, 60), history[-60:], now)
    by_source = {f.source: f.replicas for f in planned.floors}
    assert by_source["schedule"] == 30
    lead = 30 + pol.warmup_s + pol.interval_s
    assert planned.forecast is not None and planned.forecast.lead_s == lead
    assert by_source["forecast"] == -(-daily_shape(now + lead) * 1.1 // 100)

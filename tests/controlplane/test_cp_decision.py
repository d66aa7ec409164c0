"""The pure decision: a table of named cases through one helper, then hypothesis properties."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.decision import (
    Action,
    History,
    Pause,
    Pin,
    ReplicaState,
    Sample,
    decide,
    remaining_wait,
    up_step_limit,
)
from controlplane.policy import Check, Policy

NOW = 1_000_000.0
OLD = NOW - 3600  # replicas started an hour ago are long warm

TARGET = Check(name="conns", query="sum(conns)", for_s=60, target=100)
LATENCY = Check(name="p99", query="p99", for_s=60, upper=0.5, lower=0.1)


def policy(**kw: Any) -> Policy:
    base: dict[str, Any] = {
        "name": "chat", "service": "svc", "driver": "swarm", "min": 2, "max": 20,
        "checks": (TARGET,), "scale_down_stabilization_s": 120,
    }  # fmt: skip
    base.update(kw)
    return Policy(**base)


def steady(value: float, seconds: float = 600, step: float = 15) -> list[Sample]:
    n = int(seconds // step)
    return [Sample(NOW - seconds + i * step, value) for i in range(n + 1)]


def replicas(n: int, started: float = OLD) -> ReplicaState:
    return ReplicaState(desired=n, started_at=(started,) * n)


@dataclass
class Case:
    name: str
    current: ReplicaState
    samples: dict[str, list[Sample]]
    expect_desired: int
    expect_direction: str
    policy: Policy = field(default_factory=policy)
    history: History = field(default_factory=History)
    reason_has: str = ""


CASES = [
    Case("in the dead band holds", replicas(4), {"conns": steady(420)}, 4, "hold",
         reason_has="within"),
    Case("high load scales up by at most 20%", replicas(5), {"conns": steady(900)}, 6, "up",
         reason_has="step limited to +1"),
    Case("bigger step when the policy allows", replicas(5), {"conns": steady(900)}, 9, "up",
         policy=policy(up_max_percent=100)),
    Case("low load scales down one step", replicas(6), {"conns": steady(150)}, 5, "down"),
    Case("missing metric never scales down", replicas(6), {}, 6, "hold",
         reason_has="no data"),
    Case("empty series never scales down", replicas(6), {"conns": []}, 6, "hold",
         reason_has="no data"),
    Case("condition younger than `for` waits", replicas(4),
         {"conns": [*steady(420, 600), Sample(NOW, 900)]}, 4, "hold",
         reason_has="above the band for 0s of 60s"),
    Case("a single quiet sample does not scale down", replicas(6),
         {"conns": [*steady(600)[:-1], Sample(NOW, 100)]}, 6, "hold"),
    Case("scale-down goes to the highest count wanted in the window", replicas(8),
         {"conns": steady(150, 600)[:-4] + [Sample(NOW - 45 + i * 15, 480) for i in range(4)]},
         5, "down", policy=policy(down_max_step=5), reason_has="highest in 120s"),
    Case("up beats down across checks", replicas(4),
         {"conns": steady(100), "p99": steady(0.9)}, 5, "up",
         policy=policy(checks=(TARGET, LATENCY))),
    Case("hold beats down across checks", replicas(6),
         {"conns": steady(100), "p99": steady(0.3)}, 6, "hold",
         policy=policy(checks=(TARGET, LATENCY))),
    Case("no data beats down across checks", replicas(6), {"conns": steady(100)}, 6, "hold",
         policy=policy(checks=(TARGET, LATENCY)), reason_has="no data from p99"),
    Case("all checks down scales down", replicas(6),
         {"conns": steady(100), "p99": steady(0.05)}, 5, "down",
         policy=policy(checks=(TARGET, LATENCY))),
    Case("the larger up wins", replicas(10), {"conns": steady(1500), "p99": steady(0.6)}, 12,
         "up", policy=policy(checks=(TARGET, LATENCY))),
    Case("never above max", replicas(19), {"conns": steady(5000)}, 20, "up",
         policy=policy(up_max_percent=100)),
    Case("never below min", replicas(2), {"conns": steady(0)}, 2, "hold"),
    Case("below min is raised even without data", replicas(0), {}, 2, "up"),
    Case("wait after a scale-up", replicas(6), {"conns": steady(900)}, 6, "hold",
         history=History(actions=(Action(NOW - 60, 5, 6),), autoscaled=6),
         reason_has="after the last scale-up"),
    Case("wait after a scale-up is over", replicas(6), {"conns": steady(900)}, 8, "up",
         history=History(actions=(Action(NOW - 301, 5, 6),), autoscaled=6)),
    Case("cool-down after a scale-down blocks a scale-down", replicas(6),
         {"conns": steady(100)}, 6, "hold",
         history=History(actions=(Action(NOW - 300, 7, 6),), autoscaled=6),
         reason_has="cool-down"),
    Case("cool-down after a scale-down does not block a scale-up", replicas(6),
         {"conns": steady(900)}, 8, "up",
         history=History(actions=(Action(NOW - 300, 7, 6),), autoscaled=6)),
    Case("warming replicas block a scale-down", ReplicaState(6, (OLD,) * 5 + (NOW - 10,)),
         {"conns": steady(100)}, 6, "hold", reason_has="warming"),
    Case("warming replicas are not counted for a per-replica level",
         ReplicaState(5, (OLD,) * 4 + (NOW - 10,)), {"p99": steady(0.6)}, 5, "hold",
         policy=policy(checks=(LATENCY,)), reason_has="still warming"),
    Case("warm replicas count again after the warm-up", ReplicaState(5, (OLD,) * 5),
         {"p99": steady(0.6)}, 6, "up", policy=policy(checks=(LATENCY,))),
    Case("pin overrides the checks", replicas(4), {"conns": steady(2000)}, 3, "down",
         history=History(pin=Pin(3, NOW + 60, "alice", "load test")), reason_has="alice"),
    Case("an expired pin is ignored", replicas(4), {"conns": steady(420)}, 4, "hold",
         history=History(pin=Pin(9, NOW - 1, "alice"))),
    Case("pause holds whatever runs", replicas(4), {"conns": steady(2000)}, 4, "hold",
         history=History(pause=Pause("bob", NOW - 5, "incident")), reason_has="paused by bob"),
    Case("outside scale-down is restored", replicas(2), {"conns": steady(600)}, 6, "up",
         history=History(autoscaled=6), reason_has="outside change"),
    Case("outside scale-up is restored", replicas(10), {"conns": steady(600)}, 6, "down",
         history=History(autoscaled=6), reason_has="outside change"),
    Case("outside scale-up is kept while metrics are missing", replicas(10), {}, 10, "hold",
         history=History(autoscaled=6), reason_has="no data"),
    Case("dead band for thresholds", replicas(4), {"p99": steady(0.3)}, 4, "hold",
         policy=policy(checks=(LATENCY,)), reason_has="inside the band"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    d = decide(case.current, case.samples, case.policy, case.history, NOW)
    assert (d.desired, d.direction) == (case.expect_desired, case.expect_direction), d.reason
    assert case.reason_has in d.reason
    assert d.reason.startswith(d.direction)


def test_timing_helpers_take_the_clock() -> None:
    assert remaining_wait(None, 300, NOW) == 0
    assert remaining_wait(NOW - 100, 300, NOW) == 200
    assert remaining_wait(NOW - 400, 300, NOW) == 0
    assert up_step_limit(1, policy()) == 1
    assert up_step_limit(10, policy()) == 2
    assert up_step_limit(11, policy()) == 3


# --- properties -------------------------------------------------------------------------------
bounds = st.tuples(st.integers(0, 10), st.integers(1, 30)).filter(lambda b: b[0] <= b[1])
values = st.floats(0, 1e5, allow_nan=False)
series = st.lists(st.tuples(st.floats(0, 900), values), max_size=30).map(
    lambda pts: sorted((Sample(NOW - t, v) for t, v in pts), key=lambda s: s.t)
)
actions = st.lists(
    st.tuples(st.floats(0, 2000), st.integers(0, 40), st.integers(0, 40)), max_size=4
).map(lambda xs: tuple(sorted((Action(NOW - a, p, d) for a, p, d in xs), key=lambda a: a.at)))


@st.composite
def situations(draw: st.DrawFn) -> tuple[ReplicaState, dict[str, list[Sample]], Policy, History]:
    lo, hi = draw(bounds)
    pol = policy(
        min=lo,
        max=hi,
        checks=(TARGET, LATENCY),
        up_max_percent=draw(st.floats(1, 300)),
        down_max_step=draw(st.integers(1, 5)),
        warmup_s=draw(st.floats(0, 120)),
    )
    n = draw(st.integers(0, 40))
    starts = tuple(draw(st.lists(st.floats(NOW - 600, NOW), min_size=n, max_size=n)))
    samples = {c.name: draw(series) for c in pol.checks if draw(st.booleans())}
    hist = History(actions=draw(actions), autoscaled=draw(st.none() | st.integers(0, 40)))
    return ReplicaState(n, starts), samples, pol, hist


@settings(max_examples=300, deadline=None)
@given(situations())
def test_never_outside_min_max(
    s: tuple[ReplicaState, dict[str, list[Sample]], Policy, History],
) -> None:
    current, samples, pol, hist = s
    d = decide(current, samples, pol, hist, NOW)
    assert pol.min <= d.desired <= pol.max


@settings(max_examples=300, deadline=None)
@given(situations(), st.sampled_from(["conns", "p99", "both"]))
def test_never_scale_down_on_missing_data(
    s: tuple[ReplicaState, dict[str, list[Sample]], Policy, History], drop: str
) -> None:
    current, samples, pol, hist = s
    samples = {k: v for k, v in samples.items() if drop not in (k, "both")}
    d = decide(current, samples, pol, hist, NOW)
    assert d.desired >= min(current.desired, pol.max)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 15),
    st.lists(st.floats(-0.095, 0.095), min_size=20, max_size=60),
    st.floats(0.05, 0.095),
)
def test_noisy_steady_signal_in_the_dead_band_holds(
    n: int, noise: list[float], spread: float
) -> None:
    pol = policy(min=1, max=30, checks=(TARGET, LATENCY), tolerance=0.1)
    conns = [Sample(NOW - 15 * i, n * 100 * (1 + x)) for i, x in enumerate(noise)][::-1]
    p99 = [Sample(NOW - 15 * i, 0.3 + 0.19 * x / 0.095) for i, x in enumerate(noise)][::-1]
    d = decide(replicas(n), {"conns": conns, "p99": p99}, pol, History(autoscaled=n), NOW)
    assert d.direction == "hold", d.reason


@settings(max_examples=300, deadline=None)
@given(situations())
def test_step_limits_and_cool_downs(
    s: tuple[ReplicaState, dict[str, list[Sample]], Policy, History],
) -> None:
    current, samples, pol, hist = s
    hist = dataclasses.replace(hist, autoscaled=current.desired)  # no drift in this property
    d = decide(current, samples, pol, hist, NOW)
    base = current.desired
    inside = min(max(base, pol.min), pol.max)
    if base == inside:
        assert d.desired - base <= up_step_limit(base, pol)
        assert base - d.desired <= pol.down_max_step
    last_up = max((a.at for a in hist.actions if a.direction == "up"), default=None)
    last_down = max((a.at for a in hist.actions if a.direction == "down"), default=None)
    if base == inside and last_up is not None and NOW - last_up < pol.scale_up_wait_s:
        last = [a for a in hist.actions if a.direction != "hold"][-1]
        if last.direction == "up":
            assert d.direction == "hold"
    if base == inside and last_down is not None and NOW - last_down < pol.scale_down_cooldown_s:
        assert d.direction != "down"


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 15), st.integers(1, 5), st.floats(0, 29))
def test_warm_up_is_honoured(warm: int, warming: int, age: float) -> None:
    """Replicas younger than the warm-up neither count for levels nor allow a scale-down."""
    pol = policy(min=1, max=40, checks=(LATENCY,), warmup_s=30)
    n = warm + warming
    current = ReplicaState(n, (OLD,) * warm + (NOW - age,) * warming)
    low = decide(current, {"p99": steady(0.01)}, pol, History(autoscaled=n), NOW)
    assert low.direction == "hold"
    # a level 20 % above upper: the warm replicas need ceil(warm * 1.2), the warming ones cover it
    high = decide(current, {"p99": steady(0.6)}, pol, History(autoscaled=n), NOW)
    wanted = -(-warm * 6 // 5)
    assert high.direction == ("up" if wanted > n else "hold")

"""Scaling policies: what to scale, between which bounds, on which checks, how carefully.

The frozen model (:class:`Policy`, :class:`Check` and their parts), the defaults as named
constants, and :class:`PolicyError`. Parsing the YAML file is :mod:`controlplane.policy_file`;
this module does no I/O and reads no YAML, so the pure decision module can import it. Durations
are float seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.schedule import ScheduledEvent

# Defaults (the seed's "add 20%, observe 5 minutes"; HPA-like stabilisation).
DEFAULT_INTERVAL_S = 15.0  # seconds between two evaluations of one policy
DEFAULT_WARMUP_S = 30.0  # seconds a new replica runs before its metrics count
DEFAULT_SCALE_UP_WAIT_S = 300.0  # seconds after a scale-up before the next decision
DEFAULT_SCALE_DOWN_COOLDOWN_S = 600.0  # seconds after a scale-down before the next scale-down
DEFAULT_SCALE_DOWN_STABILIZATION_S = 300.0  # seconds a scale-down must be wanted throughout
DEFAULT_CHECK_FOR_S = 60.0  # seconds a check's condition must hold before it counts
DEFAULT_TOLERANCE = 0.1  # dead band around a per-replica target: ±10 % does nothing
DEFAULT_UP_MAX_PERCENT = 20.0  # a scale-up adds at most 20 % of the current count ...
DEFAULT_UP_MIN_STEP = 1  # ... but at least one replica
DEFAULT_DOWN_MAX_STEP = 1  # a scale-down removes at most one replica at a time
DEFAULT_SIM_STARTUP_DELAY_S = 30.0  # simulator: seconds before a new replica takes load
# Proportional strategy's up-policy (the HPA default): per period at most +100 % or +4 replicas,
# whichever is larger.
DEFAULT_UP_POLICY_PERCENT = 100.0
DEFAULT_UP_POLICY_REPLICAS = 4
DEFAULT_UP_POLICY_PERIOD_S = 15.0
# Predictive pre-scaling.
DEFAULT_PREDICT_LOOKBACK_S = 14 * 86400.0  # two weeks: the same weekday twice, every time of day
DEFAULT_PREDICT_MARGIN = 0.1  # head-room over the forecast peak
DEFAULT_PREDICT_STARTUP_S = 30.0  # seconds from "scale" to a replica's first request
DEFAULT_PREDICT_REFRESH_S = 600.0  # seconds between two history queries to Prometheus

Strategy = Literal["step", "proportional"]
STRATEGIES: tuple[Strategy, ...] = ("step", "proportional")

Driver = Literal["swarm", "nomad"]
DRIVERS: tuple[Driver, ...] = ("swarm", "nomad")


class PolicyError(ValueError):
    """A policy file is unusable; ``str(err)`` starts with the offending field's path."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path


@dataclass(frozen=True)
class Check:
    """One PromQL query and how to read it.

    Either ``target`` (the value one counted replica should carry; the query returns the service
    total, e.g. ``sum(tidedesk_ws_connections)``) or ``upper``/``lower`` thresholds (the query
    returns a per-replica level such as average CPU or P99 latency; above ``upper`` wants more
    replicas, below ``lower`` wants fewer, between is the dead band).
    """

    name: str
    query: str
    for_s: float = DEFAULT_CHECK_FOR_S
    target: float | None = None
    upper: float | None = None
    lower: float | None = None
    strategy: Strategy | None = None  # None: the policy's strategy

    @property
    def mode(self) -> Literal["target", "thresholds"]:
        return "target" if self.target is not None else "thresholds"


@dataclass(frozen=True)
class Simulation:
    """Parameters only ``tidedesk simulate`` uses."""

    capacity_per_replica: float | None = None
    startup_delay_s: float = DEFAULT_SIM_STARTUP_DELAY_S
    trace_start: float = 0.0  # unix time of the trace's t=0 (places scheduled events and seasons)
    metrics_lag_s: float = 0.0  # the decision sees the load this many seconds late (scrapes)
    history_s: float = 0.0  # the trace's first seconds are history only, not simulated


@dataclass(frozen=True)
class UpPolicy:
    """The proportional strategy's bound: per ``period_s``, at most ``+percent`` % of the count at
    the start of the period or ``+replicas``, whichever is larger."""

    percent: float = DEFAULT_UP_POLICY_PERCENT
    replicas: int = DEFAULT_UP_POLICY_REPLICAS
    period_s: float = DEFAULT_UP_POLICY_PERIOD_S

    def limit(self, start_count: int) -> int:
        return max(self.replicas, math.ceil(start_count * self.percent / 100.0 - 1e-9))


@dataclass(frozen=True)
class Predictive:
    """Predictive pre-scaling from the history of one ``target`` check (see forecast.py)."""

    check: str
    lookback_s: float = DEFAULT_PREDICT_LOOKBACK_S
    margin: float = DEFAULT_PREDICT_MARGIN
    startup_s: float = DEFAULT_PREDICT_STARTUP_S
    refresh_s: float = DEFAULT_PREDICT_REFRESH_S


@dataclass(frozen=True)
class Policy:
    name: str
    service: str
    driver: Driver
    min: int
    max: int
    checks: tuple[Check, ...]
    interval_s: float = DEFAULT_INTERVAL_S
    warmup_s: float = DEFAULT_WARMUP_S
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S
    scale_down_cooldown_s: float = DEFAULT_SCALE_DOWN_COOLDOWN_S
    scale_down_stabilization_s: float = DEFAULT_SCALE_DOWN_STABILIZATION_S
    tolerance: float = DEFAULT_TOLERANCE
    up_max_percent: float = DEFAULT_UP_MAX_PERCENT
    up_min_step: int = DEFAULT_UP_MIN_STEP
    down_max_step: int = DEFAULT_DOWN_MAX_STEP
    dry_run: bool = False
    group: str | None = None  # Nomad task group; None means "the job's only group"
    namespace: str | None = None  # Nomad namespace
    simulation: Simulation = field(default_factory=Simulation)
    strategy: Strategy = "step"  # default for checks that name none
    up_policy: UpPolicy = field(default_factory=UpPolicy)
    predictive: Predictive | None = None
    events: tuple[ScheduledEvent, ...] = ()  # from the file's `events`, those naming this policy

    def strategy_of(self, check_name: str) -> Strategy:
        for c in self.checks:
            if c.name == check_name and c.strategy is not None:
                return c.strategy
        return self.strategy

    @property
    def predict_lead_s(self) -> float:
        """How far ahead prediction looks: start-up, warm-up, and one evaluation interval."""
        if self.predictive is None:
            return 0.0
        return self.predictive.startup_s + self.warmup_s + self.interval_s

    @property
    def metrics_window_s(self) -> float:
        """How far back the decision needs samples: the longest ``for`` or the stabilisation."""
        longest_for = max((c.for_s for c in self.checks), default=0.0)
        return max(longest_for, self.scale_down_stabilization_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service": self.service,
            "driver": self.driver,
            "min": self.min,
            "max": self.max,
            "interval_s": self.interval_s,
            "warmup_s": self.warmup_s,
            "scale_up_wait_s": self.scale_up_wait_s,
            "scale_down_cooldown_s": self.scale_down_cooldown_s,
            "scale_down_stabilization_s": self.scale_down_stabilization_s,
            "tolerance": self.tolerance,
            "step": {
                "up_max_percent": self.up_max_percent,
                "up_min": self.up_min_step,
                "down_max": self.down_max_step,
            },
            "dry_run": self.dry_run,
            "strategy": self.strategy,
            "up_policy": {
                "percent": self.up_policy.percent,
                "replicas": self.up_policy.replicas,
                "period_s": self.up_policy.period_s,
            },
            "predictive": None
            if self.predictive is None
            else {
                "check": self.predictive.check,
                "lookback_s": self.predictive.lookback_s,
                "margin": self.predictive.margin,
                "startup_s": self.predictive.startup_s,
                "lead_s": self.predict_lead_s,
            },
            "checks": [
                {
                    k: v
                    for k, v in (
                        ("name", c.name),
                        ("query", c.query),
                        ("for_s", c.for_s),
                        ("target", c.target),
                        ("upper", c.upper),
                        ("lower", c.lower),
                        ("strategy", c.strategy),
                    )
                    if v is not None
                }
                for c in self.checks
            ],
        }

"""One evaluation of one policy: read the target, fetch metrics, decide, act, record.

The controller only wires the seams (target, metrics source, pure decision, state). Any failure
of a target or of Prometheus is recorded in the status and the log and ends that evaluation; it
never escapes to the scheduler. Evaluations of one policy never overlap (a lock per policy), so
an alert-triggered run and a scheduled run are serialised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.decision import Sample, decide
from controlplane.floors import Planned, planned_floors
from controlplane.forecast import ERROR_WINDOW_S, SeasonalModel
from controlplane.metrics_source import Fetch, MetricsError, MetricsSource
from controlplane.policy import Policy
from controlplane.state import ControlPlaneState
from controlplane.target import Target, TargetError, TargetMissing
from controlplane.telemetry import Telemetry

log = logging.getLogger(__name__)

RECENT_STEP_S = 60.0  # seconds between the recent points the forecast's level and error read


@dataclass
class _ForecastMemory:
    """Per policy: the seasonal model (re-read every ``predictive.refresh``) and past floors."""

    model: SeasonalModel | None = None
    built_at: float = float("-inf")
    past: deque[tuple[float, int]] | None = None
    # The last hour at RECENT_STEP_S (today's level, the error): it gains a point a minute, so
    # it is read once a minute, not at every evaluation.
    recent: list[Sample] = field(default_factory=list)
    recent_at: float = float("-inf")


class Controller:
    def __init__(
        self,
        state: ControlPlaneState,
        metrics: MetricsSource,
        targets: Mapping[str, Target],
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self._metrics = metrics
        self._targets = targets
        self._telemetry = telemetry
        self._clock = clock
        self._on_change = on_change or (lambda: None)
        self._locks = {name: threading.Lock() for name in state.names()}
        self._forecasts = {name: _ForecastMemory(past=deque()) for name in state.names()}

    def evaluate(self, name: str, trigger: str = "schedule") -> dict[str, Any] | None:
        """Run one evaluation; returns the recorded decision, or None if it could not decide."""
        with self._locks[name]:
            started = time.monotonic()
            try:
                return self._evaluate(name, trigger)
            except Exception as exc:  # a bug here must not kill the scheduler's job
                log.exception("evaluation failed", extra={"policy": name})
                self.state.record_error(name, "internal", repr(exc), self._clock())
                self._telemetry.errors.labels(name, "internal").inc()
                return None
            finally:
                self._telemetry.duration.labels(name).observe(time.monotonic() - started)
                self._on_change()

    def _evaluate(self, name: str, trigger: str) -> dict[str, Any] | None:
        now = self._clock()
        self.state.expire_pins(now)
        policy = self.state.policy(name)
        target = self._targets[policy.driver]
        try:
            current = target.read(policy)
        except TargetError as exc:
            missing = isinstance(exc, TargetMissing)
            log.warning("target read failed",
                        extra={"policy": name, "error": str(exc), "missing": missing})
            self.state.record_error(name, "target_read", str(exc), now)
            self.state.record_target(name, str(exc), missing, now)
            self._telemetry.errors.labels(name, "target_read").inc()
            self._telemetry.target_missing.labels(name).set(1 if missing else 0)
            return None
        self.state.record_target(name, None, False, now)
        self._telemetry.target_missing.labels(name).set(0)
        try:
            fetch = self._metrics.fetch(policy, now)
        except Exception as exc:  # the source's own error handling failed: no data at all
            log.exception("metrics source failed", extra={"policy": name})
            fetch = Fetch(samples={}, errors={c.name: repr(exc) for c in policy.checks})
        if fetch.errors:
            self._telemetry.errors.labels(name, "metrics").inc()
        history = self.state.history(name)
        planned, forecast_error = self._plan(policy, now)
        metric_errors = dict(fetch.errors)
        if forecast_error:
            metric_errors["forecast"] = forecast_error
            self._telemetry.errors.labels(name, "forecast").inc()
        decision = decide(current, fetch.samples, policy, history, now, planned.floors)
        pin = history.pin if history.pin is not None and history.pin.until > now else None
        who = f"pin by {pin.by}" if pin is not None else "autoscaler"
        outcome, note = "hold", ""
        if decision.changes and history.pause is None:
            if policy.dry_run:
                outcome, note = "dry_run", "dry-run: nothing was changed"
            else:
                try:
                    result = target.scale(policy, decision.desired, decision.reason)
                except TargetError as exc:
                    outcome, note = "error", str(exc)
                    log.warning("scale failed", extra={"policy": name, "error": str(exc)})
                    self.state.record_error(name, "scale", str(exc), now)
                    self._telemetry.errors.labels(name, "scale").inc()
                else:
                    outcome, note = ("scaled", "") if result.applied else ("declined", result.note)
                    if result.applied:
                        self._telemetry.actions.labels(name, decision.direction).inc()
        entry = self.state.record_evaluation(
            name, current, decision, trigger=trigger, outcome=outcome, who=who, note=note,
            metric_errors=metric_errors, now=now,
        )  # fmt: skip
        log.info(
            "decision",
            extra={
                "policy": name,
                "trigger": trigger,
                "outcome": outcome,
                "desired": decision.desired,
                "reason": decision.reason,
            },
        )
        t = self._telemetry
        t.current.labels(name).set(current.desired)
        t.desired.labels(name).set(decision.desired)
        t.decisions.labels(name, decision.direction).inc()
        t.paused.labels(name).set(1 if history.pause is not None else 0)
        t.pinned.labels(name).set(1 if pin is not None else 0)
        for source in ("schedule", "forecast"):
            floor = next((f.replicas for f in planned.floors if f.source == source), 0)
            t.floor.labels(name, source).set(floor)
        if planned.forecast is not None:
            t.forecast_peak.labels(name).set(planned.forecast.peak)
            if planned.forecast.error is not None:
                t.forecast_error.labels(name).set(planned.forecast.error)
        return entry

    def _plan(self, policy: Policy, now: float) -> tuple[Planned, str]:
        """Floors from the calendar and the forecast; a failed history query costs only the
        forecast floor (returned as the error), never the evaluation."""
        memory = self._forecasts[policy.name]
        pred = policy.predictive
        error = ""
        recent: list[Sample] = []
        if pred is not None:
            query = next(c.query for c in policy.checks if c.name == pred.check)
            try:
                if now - memory.built_at >= pred.refresh_s:
                    step = self._metrics.history_step(pred.lookback_s)
                    start = (now - pred.lookback_s) // step * step
                    history = self._metrics.series(query, start, now, step)
                    memory.model = SeasonalModel(history, step)
                    memory.built_at = now
                if now - memory.recent_at >= RECENT_STEP_S:
                    start = (now - ERROR_WINDOW_S) // RECENT_STEP_S * RECENT_STEP_S
                    memory.recent = self._metrics.series(query, start, now, RECENT_STEP_S)
                    memory.recent_at = now
                recent = memory.recent
            except MetricsError as exc:
                error = f"history for the forecast: {exc}"
                log.warning("forecast failed", extra={"policy": policy.name, "error": error})
        assert memory.past is not None
        planned = planned_floors(
            policy, self.state.events_for(policy.name), None if error else memory.model, recent,
            now, tuple(memory.past),
        )  # fmt: skip
        if planned.forecast_replicas is not None:
            memory.past.append((now, planned.forecast_replicas))
        while memory.past and memory.past[0][0] < now - policy.scale_down_stabilization_s:
            memory.past.popleft()
        floors: dict[str, Any] = {
            f.source: {"replicas": f.replicas, "reason": f.reason} for f in planned.floors
        }
        forecast: dict[str, Any] | None = None
        if planned.forecast is not None:
            forecast = {**planned.forecast.to_dict(), "replicas": planned.forecast_replicas}
        elif pred is not None:
            have = 0.0 if memory.model is None else memory.model.span_s / 86400
            forecast = {"error": error or f"not enough history yet ({have:.1f} days)"}
        active = frozenset(e.name for e in self.state.events_for(policy.name) if e.active(now))
        self.state.record_floors(policy.name, floors, forecast, active, now)
        return planned, error

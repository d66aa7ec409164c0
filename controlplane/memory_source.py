"""An in-memory metrics source (as kombu's ``memory://`` is to RabbitMQ): what the simulator and
tests hand the real :class:`controlplane.controller.Controller` instead of Prometheus.

Each query names one series of recorded samples. A sample holds until the next one (there is no
staleness), and a range query answers as :class:`PrometheusSource` does: ``start`` and ``end``
rounded to a second, then one point at ``start + k * step`` for every ``k`` with that time
``<= end``, valued by the latest sample at or before it; points before the first sample are
absent, and an unknown query matches nothing. Forecast history is served at
:func:`history_step` under ``history_max_points`` (Prometheus's limit by default; the simulator
lifts it, see :mod:`controlplane.simulate`).
"""

from __future__ import annotations

import bisect

from controlplane.decision import Sample
from controlplane.metrics_source import (
    HISTORY_MAX_POINTS,
    Fetch,
    MetricsError,
    fetch_checks,
    history_step,
)
from controlplane.policy import Policy


class MemorySource:
    def __init__(self, history_max_points: float = HISTORY_MAX_POINTS) -> None:
        self._history_max_points = history_max_points
        self._times: dict[str, list[float]] = {}
        self._values: dict[str, list[float]] = {}
        self._broken: dict[str, str] = {}

    def record(self, query: str, t: float, value: float) -> None:
        """Add a sample; times must not go back (a sample at the same time replaces the last)."""
        times = self._times.setdefault(query, [])
        values = self._values.setdefault(query, [])
        if times and t < times[-1]:
            raise ValueError(f"sample at {t} is older than the last one ({times[-1]})")
        if times and t == times[-1]:
            values[-1] = value
            return
        times.append(t)
        values.append(value)

    def fail(self, query: str, message: str) -> None:
        """Make every later query for ``query`` fail with ``message`` (as a broken PromQL would)."""
        self._broken[query] = message

    def series(self, query: str, start: float, end: float, step: float) -> list[Sample]:
        if query in self._broken:
            raise MetricsError(f"prometheus query failed: {self._broken[query]}")
        if step <= 0:
            raise MetricsError("prometheus query failed: step must be greater than 0")
        # As PrometheusSource sends them: prometheus-api-client rounds both ends to a second.
        start, end = round(start), round(end)
        times, values = self._times.get(query, []), self._values.get(query, [])
        out: list[Sample] = []
        k = 0
        while (t := start + k * step) <= end:
            i = bisect.bisect_right(times, t) - 1
            if i >= 0:
                out.append(Sample(t, values[i]))
            k += 1
        return out

    def history_step(self, lookback_s: float) -> float:
        return history_step(lookback_s, self._history_max_points)

    def fetch(self, policy: Policy, now: float) -> Fetch:
        return fetch_checks(self, policy, now)

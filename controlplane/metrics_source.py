"""Where metric samples come from: Prometheus's HTTP API through prometheus-api-client.

For each check, one range query over the window the decision needs (the longest ``for`` or the
scale-down stabilisation), so "held for 60 s" is judged on what Prometheus recorded, not on how
often the daemon happened to look. A query must return one series; an error or a wrong shape
becomes an error message for that check (the check then has no data: it never scales down).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from controlplane.decision import Sample
from controlplane.policy import Policy

log = logging.getLogger(__name__)

PROMETHEUS_TIMEOUT_S = 5  # seconds for one query; the loop must keep its rhythm
MIN_STEP_S = 1.0  # seconds: finest range-query resolution asked for
MAX_POINTS = 120  # points per range query; the step grows for long windows
# History for the forecast: the finest step (dividing a day) that keeps a range query under
# Prometheus's 11,000 points per series.
HISTORY_STEPS_S = (60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
HISTORY_MAX_POINTS = 10_000


@dataclass(frozen=True)
class Fetch:
    samples: Mapping[str, Sequence[Sample]]
    errors: Mapping[str, str] = field(default_factory=dict)  # check name -> what went wrong


class MetricsError(Exception):
    """A query failed or returned the wrong shape; the message says which."""


class MetricsSource(Protocol):
    """Where samples come from: :class:`PrometheusSource`, or
    :class:`controlplane.memory_source.MemorySource` for the simulator and tests."""

    def fetch(self, policy: Policy, now: float) -> Fetch:
        """Each check's samples over ``policy.metrics_window_s`` up to ``now``, at
        :func:`query_step`; a failed check is in ``errors``, never raised."""
        ...

    def series(self, query: str, start: float, end: float, step: float) -> list[Sample]:
        """One series from a range query (empty when the query matches nothing)."""
        ...

    def history_step(self, lookback_s: float) -> float:
        """The finest step at which this source serves ``lookback_s`` of forecast history."""
        ...


def query_step(policy: Policy) -> float:
    window = policy.metrics_window_s
    return max(MIN_STEP_S, min(policy.interval_s, window / MAX_POINTS if window else MIN_STEP_S))


def history_step(lookback_s: float, max_points: float = HISTORY_MAX_POINTS) -> float:
    for step in HISTORY_STEPS_S:
        if lookback_s / step <= max_points:
            return step
    return HISTORY_STEPS_S[-1]


class PrometheusSource:
    def __init__(self, url: str, timeout_s: float = PROMETHEUS_TIMEOUT_S) -> None:
        self._timeout = timeout_s
        # No retries with back-off: a down Prometheus must fail fast and show in the status.
        self._prom = PrometheusConnect(
            url=url.rstrip("/"), disable_ssl=True, retry=Retry(total=0), timeout=timeout_s
        )

    def series(self, query: str, start: float, end: float, step: float) -> list[Sample]:
        try:
            result = self._prom.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(start, UTC),
                end_time=datetime.fromtimestamp(end, UTC),
                step=f"{step:g}",
                params={"timeout": f"{self._timeout:g}s"},
                timeout=self._timeout,
            )
        except (PrometheusApiClientException, requests.RequestException, ValueError) as exc:
            raise MetricsError(f"prometheus query failed: {exc}") from None
        if len(result) > 1:
            raise MetricsError(
                f"query returned {len(result)} series; aggregate it to one (e.g. sum(...))"
            )
        series: list[Sample] = []
        for point in result[0].get("values", []) if result else []:
            try:
                t, v = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError):
                continue
            if math.isfinite(v):
                series.append(Sample(t, v))
        return series

    def history_step(self, lookback_s: float) -> float:
        return history_step(lookback_s)

    def fetch(self, policy: Policy, now: float) -> Fetch:
        return fetch_checks(self, policy, now)


def fetch_checks(source: MetricsSource, policy: Policy, now: float) -> Fetch:
    """Every check's window through ``source.series``: what any source's ``fetch`` returns.

    A failed query becomes an error for its check (that check then has no data), so one broken
    query never hides the others.
    """
    step = query_step(policy)
    start = now - policy.metrics_window_s
    samples: dict[str, list[Sample]] = {}
    errors: dict[str, str] = {}
    for check in policy.checks:
        try:
            samples[check.name] = source.series(check.query, start, now, step)
        except MetricsError as exc:
            errors[check.name] = str(exc)
            log.warning(
                "prometheus query failed",
                extra={"policy": policy.name, "check": check.name, "error": str(exc)},
            )
    return Fetch(samples=samples, errors=errors)

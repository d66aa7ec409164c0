"""Seasonal load forecast for predictive pre-scaling. Pure: history in, numbers out.

The method (explained for people in docs/controlplane.md):

* **Season.** The expected load at time ``T`` is the median of the load at the same time of day
  on each of the last 7 days (``T - 1d`` ... ``T - 7d``), averaged with the median of the same
  time of week over the last weeks (``T - 7d``, ``T - 14d``) when that much history exists. The
  daily median ignores a one-off day (yesterday's flash sale does not come back every evening);
  the weekly term carries the weekday/weekend difference.
* **Level.** Today may be busier or quieter than usual. The level is the median, over the last
  30 minutes, of actual ÷ seasonal, clipped to [0.5, 2]. The forecast is ``season × level``.
* **Error.** The weighted absolute percentage error of ``season × level`` against what was
  measured over the last hour: ``Σ|forecast − actual| ÷ Σ actual``. Shown in the status and in
  ``tidedesk_controlplane_forecast_error_ratio``.

The prediction only ever reads history older than ``now``. It never lowers the count: the
decision uses it as a floor (``max``) under the reactive answer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controlplane.decision import Sample

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
DAILY_LAGS = 7  # days whose same time of day feed the daily median
WEEKLY_LAGS = 2  # weeks whose same time of week feed the weekly median
LEVEL_WINDOW_S = 1800.0  # the level compares the last 30 minutes with their season
ERROR_WINDOW_S = 3600.0  # the error is measured over the last hour
LEVEL_CLIP = (0.5, 2.0)  # a level outside this is an anomaly the reactive checks handle


class SeasonalModel:
    """Load history on a regular grid of ``step_s`` seconds, and the season read from it."""

    def __init__(self, history: Iterable[Sample], step_s: float) -> None:
        if step_s <= 0:
            raise ValueError("step_s must be greater than 0")
        self.step_s = step_s
        self._values = {round(s.t / step_s): s.value for s in history if math.isfinite(s.value)}
        self._season: dict[int, float | None] = {}

    def __len__(self) -> int:
        return len(self._values)

    @property
    def span_s(self) -> float:
        if not self._values:
            return 0.0
        return (max(self._values) - min(self._values)) * self.step_s

    def _at(self, t: float, now: float) -> float | None:
        if t > now:  # never read the future, even when the history object holds it
            return None
        return self._values.get(round(t / self.step_s))

    def season(self, t: float, now: float) -> float | None:
        """The seasonal load expected at ``t``, from history older than ``now``."""
        slot = round(t / self.step_s)
        t = slot * self.step_s
        final = t - DAY_S <= now  # every lag is in the past: the answer no longer depends on now
        if final and slot in self._season:
            return self._season[slot]
        daily = [
            v for d in range(1, DAILY_LAGS + 1) if (v := self._at(t - d * DAY_S, now)) is not None
        ]
        weekly = [
            v for w in range(1, WEEKLY_LAGS + 1) if (v := self._at(t - w * WEEK_S, now)) is not None
        ]
        parts = [statistics.median(x) for x in (daily, weekly) if x]
        value = sum(parts) / len(parts) if parts else None
        if final:
            self._season[slot] = value
        return value

    def level(self, recent: Sequence[Sample], now: float) -> float:
        ratios = []
        for s in recent:
            if now - LEVEL_WINDOW_S <= s.t <= now:
                season = self.season(s.t, now)
                if season is not None and season > 0:
                    ratios.append(s.value / season)
        if not ratios:
            return 1.0
        lo, hi = LEVEL_CLIP
        return min(hi, max(lo, statistics.median(ratios)))

    def error(self, recent: Sequence[Sample], level: float, now: float) -> float | None:
        num = den = 0.0
        for s in recent:
            if now - ERROR_WINDOW_S <= s.t <= now:
                season = self.season(s.t, now)
                if season is not None:
                    num += abs(season * level - s.value)
                    den += abs(s.value)
        return num / den if den > 0 else None


@dataclass(frozen=True)
class Forecast:
    peak: float  # the highest load expected between now and now + lead
    peak_at: float  # when
    level: float
    error: float | None  # weighted absolute percentage error over the last hour, as a ratio
    lead_s: float
    hold_s: float = 0.0

    def to_dict(self) -> dict[str, float | None]:
        return {
            "peak": round(self.peak, 2),
            "peak_in_s": round(self.peak_at, 1),
            "level": round(self.level, 3),
            "error_ratio": None if self.error is None else round(self.error, 4),
            "lead_s": self.lead_s,
            "hold_s": self.hold_s,
        }


def forecast(
    model: SeasonalModel,
    recent: Sequence[Sample],
    now: float,
    lead_s: float,
    hold_s: float = 0.0,
) -> Forecast | None:
    """The peak expected from ``now - hold_s`` to ``now + lead_s + hold_s``; None without
    history.

    ``lead_s`` is how long a new replica needs to serve; ``hold_s`` (the scale-down
    stabilisation) keeps the answer steady: a seasonal peak stays in view from ``hold_s`` before
    it until ``hold_s`` after, so the floor does not fall just before the next little rise (a
    scale-down followed by a scale-up is a flap).
    """
    level = model.level(recent, now)
    peak: float | None = None
    peak_at = 0.0
    first = now - hold_s
    span = lead_s + 2 * hold_s
    steps = max(1, math.ceil(span / model.step_s))
    for i in range(steps + 1):
        t = first + min(i * model.step_s, span)
        season = model.season(t, now)
        if season is not None and (peak is None or season > peak):
            peak, peak_at = season, t - now
    if peak is None:
        return None
    error = model.error(recent, level, now)
    return Forecast(peak * level, peak_at, level, error, lead_s, hold_s)


def replicas_for(fc: Forecast, target: float, margin: float) -> int:
    """Replicas that carry the forecast peak at ``target`` each, with ``margin`` head-room."""
    return max(0, math.ceil(fc.peak * (1 + margin) / target - 1e-9))

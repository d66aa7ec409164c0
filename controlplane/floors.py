"""What may raise a policy's floor above the reactive decision: the calendar and the forecast.

Pure: the controller and the simulator both call :func:`planned_floors` with the events, the
seasonal model (or None) and the recent samples they hold, and hand the floors to ``decide``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controlplane.decision import Floor, Sample
from controlplane.forecast import Forecast, SeasonalModel, forecast, replicas_for
from controlplane.policy import Policy
from controlplane.schedule import ScheduledEvent, scheduled_floor


@dataclass(frozen=True)
class Planned:
    floors: tuple[Floor, ...]
    forecast: Forecast | None
    forecast_replicas: int | None  # what this forecast alone wants (remember it for `past`)


def planned_floors(
    policy: Policy,
    events: Iterable[ScheduledEvent],
    model: SeasonalModel | None,
    recent: Sequence[Sample],
    now: float,
    past: Sequence[tuple[float, int]] = (),
) -> Planned:
    """The floors at ``now``. ``past`` holds earlier ``(time, forecast_replicas)``; the forecast
    floor is the highest of them over the scale-down stabilisation window, as the HPA stabilises
    its recommendations, so a forecast that wobbles around a whole replica cannot flap."""
    floors: list[Floor] = []
    sf = scheduled_floor(events, policy.name, now)
    if sf is not None:
        when = (
            f"starts in {sf.starts_in_s:.0f}s" if sf.starts_in_s > 0
            else f"running for {-sf.starts_in_s:.0f}s"
        )  # fmt: skip
        floors.append(Floor(sf.replicas, "schedule", f"scheduled event {sf.event} ({when})"))
    fc: Forecast | None = None
    wanted: int | None = None
    pred = policy.predictive
    if pred is not None and model is not None:
        target = next(c.target for c in policy.checks if c.name == pred.check)
        assert target is not None
        fc = forecast(
            model, recent, now, policy.predict_lead_s, policy.scale_down_stabilization_s
        )
        if fc is not None:
            wanted = replicas_for(fc, target, pred.margin)
            window = now - policy.scale_down_stabilization_s
            held = max([n for t, n in past if t >= window] + [wanted])
            floors.append(
                Floor(
                    held, "forecast",
                    f"{pred.check} forecast {fc.peak:.4g} at {fc.peak_at:+.0f}s "
                    f"(level {fc.level:.2f}) + {pred.margin * 100:.0f}% margin"
                    + (f", held at {held} for stability" if held > wanted else ""),
                )
            )  # fmt: skip
    return Planned(tuple(floors), fc, wanted)

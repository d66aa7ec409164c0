"""The scaling decision: a pure function of (current replicas, samples, policy, history, now).

Nothing here touches a network, a disk or a clock; the caller passes ``now`` (unix seconds).
:func:`decide` returns a :class:`Decision` with the desired count, a direction and a sentence a
person can read in the status page or the audit log.

Rules, in the order they apply:

1. **Pause** - a paused policy keeps whatever count the service has.
2. **Pin** - an unexpired pin sets the count (clamped to ``[min, max]``), checks are not consulted.
3. **Outside changes** - the strategy works from the count the control plane itself last set
   (``history.autoscaled``). If the service runs a different count (``docker service scale``, a
   ``docker stack deploy`` that reset it), that is *drift*: it is reported and the autoscaled count
   is restored at this evaluation. Restoring is not subject to cool-downs (the count was reached
   under them already), but a restore that would lower the count is not done while any check
   lacks data: then the outside count is kept and adopted.
4. **Checks** - each check votes ``up``, ``hold``, ``down`` or ``no_data``:

   * ``target`` checks read the query as the service total; the wanted count is
     ``ceil(total / target)``; within ``±tolerance`` of ``base x target`` is the dead band.
   * ``upper``/``lower`` checks read a per-replica level; above ``upper`` wants
     ``ceil(counted x value / upper)`` (at least one more), below ``lower`` wants one step fewer,
     in between holds.
   * A condition counts only once it has held for the check's ``for`` (all samples in that window
     agree, and the samples reach back that far). A scale-down must hold for
     ``max(for, scale_down_stabilization)`` and goes to the *largest* count wanted in that window,
     so a single quiet sample never scales down.
   * Replicas younger than ``warmup`` are not counted: they carry no weight in per-replica levels,
     and no scale-down happens while any replica is warming.

   The safest vote wins: any ``up`` (the largest) beats ``hold``/``no_data``, which beat ``down``
   (the smallest reduction). Missing data therefore never scales down.
5. **Waits** - after a scale-up nothing happens for ``scale_up_wait`` ("add 20 %, observe 5
   minutes"); after a scale-down no further scale-down for ``scale_down_cooldown`` (a scale-up is
   still allowed: a flash sale must not wait for a cool-down).
6. **Steps** - the winning ``up`` check's strategy bounds the scale-up:

   * ``step`` (the seed's conservative choice): up by at most
     ``max(up_min_step, ceil(base x up_max_percent / 100))``, then ``scale_up_wait``.
   * ``proportional`` (as the Kubernetes HPA and the Nomad Autoscaler's target-value): straight
     to the wanted count ``ceil(current x metric / target)``, bounded by the up-policy: within any
     ``up_policy.period`` at most ``+percent`` % of the count at the start of the period or
     ``+replicas``, whichever is larger; no ``scale_up_wait``.

   Down by at most ``down_max_step``, under the same stabilisation for both strategies.
7. **Floors** - a scheduled event or the forecast may raise the count to a floor (``floors``).
   A floor only raises: it never lowers the reactive answer. Pause and pin stand above floors.
   The result is always within ``[min, max]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.policy import Check, Policy

Direction = Literal["up", "down", "hold"]
Vote = Literal["up", "down", "hold", "no_data"]

# Samples come from range queries whose steps do not line up exactly with ``now``; a condition
# "held for 60 s" accepts a first sample up to this many seconds late.
SAMPLE_ALIGNMENT_SLACK_S = 1.0
_EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    t: float  # unix seconds
    value: float


@dataclass(frozen=True)
class ReplicaState:
    """What the orchestrator reports: the count it is asked to run and the running replicas."""

    desired: int
    started_at: tuple[float, ...] = ()  # start time (unix seconds) of every running replica

    def warm(self, now: float, warmup_s: float) -> int:
        return sum(1 for s in self.started_at if now - s >= warmup_s)

    def to_dict(self) -> dict[str, Any]:
        return {"desired": self.desired, "running": len(self.started_at)}


@dataclass(frozen=True)
class Action:
    """A scaling action the control plane took (or would have taken, in dry-run)."""

    at: float
    previous: int
    desired: int
    by: str = "autoscaler"

    @property
    def direction(self) -> Direction:
        if self.desired > self.previous:
            return "up"
        return "down" if self.desired < self.previous else "hold"


@dataclass(frozen=True)
class Pin:
    replicas: int
    until: float
    by: str
    reason: str = ""


@dataclass(frozen=True)
class Pause:
    by: str
    at: float
    reason: str = ""


@dataclass(frozen=True)
class History:
    """What the control plane remembers about one policy."""

    actions: tuple[Action, ...] = ()  # oldest first
    autoscaled: int | None = None  # the count the control plane last set; None before the first
    pin: Pin | None = None
    pause: Pause | None = None


@dataclass(frozen=True)
class Floor:
    """A lower bound from outside the checks: a scheduled event or the load forecast."""

    replicas: int
    source: Literal["schedule", "forecast"]
    reason: str


@dataclass(frozen=True)
class CheckVerdict:
    check: str
    vote: Vote
    value: float | None
    wanted: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "vote": self.vote,
            "value": self.value,
            "wanted": self.wanted,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Decision:
    desired: int
    direction: Direction
    reason: str
    previous: int
    drift: bool = False
    verdicts: tuple[CheckVerdict, ...] = field(default_factory=tuple)

    @property
    def changes(self) -> bool:
        return self.desired != self.previous

    def to_dict(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "desired": self.desired,
            "direction": self.direction,
            "reason": self.reason,
            "drift": self.drift,
            "checks": [v.to_dict() for v in self.verdicts],
        }


def clamp(n: int, policy: Policy) -> int:
    return max(policy.min, min(policy.max, n))


def up_step_limit(base: int, policy: Policy) -> int:
    """Most replicas one scale-up may add: a percentage of ``base``, at least ``up_min_step``."""
    return max(policy.up_min_step, math.ceil(base * policy.up_max_percent / 100.0 - _EPS))


def period_start_count(actions: Sequence[Action], base: int, now: float, period_s: float) -> int:
    """The count at the start of the up-policy period ending at ``now``."""
    inside = [a for a in actions if a.at > now - period_s]
    return inside[0].previous if inside else base


def remaining_wait(last_at: float | None, wait_s: float, now: float) -> float:
    """Seconds still to wait after an event at ``last_at`` (0 when none or already over)."""
    if last_at is None:
        return 0.0
    return max(0.0, last_at + wait_s - now)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _held_since(series: Sequence[Sample], cond: Any) -> float | None:
    """Time of the earliest sample from which every later sample satisfies ``cond``."""
    since: float | None = None
    for s in reversed(series):
        if not cond(s.value):
            break
        since = s.t
    return since


def _window(series: Sequence[Sample], start: float) -> list[Sample]:
    return [s for s in series if s.t >= start - SAMPLE_ALIGNMENT_SLACK_S]


def evaluate_check(
    check: Check,
    series: Sequence[Sample],
    base: int,
    counted: int,
    warming: int,
    policy: Policy,
    now: float,
) -> CheckVerdict:
    """One check's vote, with the count it wants and why."""
    series = [s for s in series if s.t <= now and math.isfinite(s.value)]
    if not series:
        return CheckVerdict(check.name, "no_data", None, None, "no data")
    v = series[-1].value
    down_for = max(check.for_s, policy.scale_down_stabilization_s)

    def held(cond: Any, need_s: float) -> tuple[bool, float]:
        since = _held_since(series, cond)
        if since is None:
            return False, 0.0
        return since <= now - need_s + SAMPLE_ALIGNMENT_SLACK_S, now - since

    if check.target is not None:
        target = check.target
        per = v / counted if counted else v
        up_line = base * target * (1 + policy.tolerance)
        down_line = base * target * (1 - policy.tolerance)

        def wanted_at(x: float) -> int:
            return max(0, math.ceil(x / target - _EPS))

        def is_up(x: float) -> bool:
            return x > up_line and wanted_at(x) > base

        def is_down(x: float) -> bool:
            return x < down_line and wanted_at(x) < base

        desc = f"{_fmt(v)} total ({_fmt(per)} per counted replica) vs target {_fmt(target)}"
        if is_up(v):
            ok, dur = held(is_up, check.for_s)
            want = wanted_at(v)
            if not ok:
                return CheckVerdict(
                    check.name, "hold", v, base,
                    f"{desc}: above the band for {dur:.0f}s of {check.for_s:.0f}s",
                )  # fmt: skip
            return CheckVerdict(check.name, "up", v, want, f"{desc}: wants {want}")
        if is_down(v):
            ok, dur = held(is_down, down_for)
            if not ok:
                return CheckVerdict(
                    check.name, "hold", v, base,
                    f"{desc}: below the band for {dur:.0f}s of {down_for:.0f}s",
                )  # fmt: skip
            recent = _window(series, now - down_for) or series[-1:]
            want = max(wanted_at(s.value) for s in recent)
            return CheckVerdict(
                check.name, "down", v, want, f"{desc}: wants {want} (highest in {down_for:.0f}s)"
            )
        return CheckVerdict(
            check.name, "hold", v, base,
            f"{desc}: within ±{policy.tolerance * 100:.0f}% of {base}x{_fmt(target)}",
        )  # fmt: skip

    assert check.upper is not None and check.lower is not None
    upper, lower = check.upper, check.lower
    desc = f"{_fmt(v)} vs band [{_fmt(lower)}, {_fmt(upper)}]"
    if v > upper:
        ok, dur = held(lambda x: x > upper, check.for_s)
        if not ok:
            return CheckVerdict(
                check.name, "hold", v, base,
                f"{desc}: above for {dur:.0f}s of {check.for_s:.0f}s",
            )  # fmt: skip
        if counted == 0 and warming > 0:
            return CheckVerdict(
                check.name, "hold", v, base, f"{desc}: all {warming} replicas still warming up"
            )
        measured = counted if counted else max(base, 1)
        want = math.ceil(measured * v / upper - _EPS)
        if warming:
            if want <= base:
                return CheckVerdict(
                    check.name, "hold", v, base,
                    f"{desc}: {counted} warm replicas need {want}, "
                    f"{warming} more still warming up",
                )  # fmt: skip
        else:
            want = max(want, base + 1)
        return CheckVerdict(check.name, "up", v, want, f"{desc}: above upper, wants {want}")
    if v < lower:
        ok, dur = held(lambda x: x < lower, down_for)
        if not ok:
            return CheckVerdict(
                check.name, "hold", v, base,
                f"{desc}: below for {dur:.0f}s of {down_for:.0f}s",
            )  # fmt: skip
        want = max(0, base - policy.down_max_step)
        return CheckVerdict(check.name, "down", v, want, f"{desc}: below lower, wants {want}")
    return CheckVerdict(check.name, "hold", v, base, f"{desc}: inside the band")


def _last(actions: Sequence[Action], direction: Direction) -> float | None:
    for a in reversed(actions):
        if a.direction == direction:
            return a.at
    return None


def _decision(
    previous: int, desired: int, reason: str, drift: bool, verdicts: tuple[CheckVerdict, ...]
) -> Decision:
    direction: Direction = (
        "up" if desired > previous else "down" if desired < previous else "hold"
    )
    arrow = f"{previous}→{desired}" if desired != previous else f"at {desired}"
    return Decision(
        desired=desired,
        direction=direction,
        reason=f"{direction} {arrow}: {reason}",
        previous=previous,
        drift=drift,
        verdicts=verdicts,
    )


def decide(
    current: ReplicaState,
    samples: Mapping[str, Sequence[Sample]],
    policy: Policy,
    history: History,
    now: float,
    floors: Sequence[Floor] = (),
) -> Decision:
    """The desired replica count for ``policy`` now; see the module docstring for the rules."""
    cur = current.desired
    if history.pause is not None:
        p = history.pause
        why = f" ({p.reason})" if p.reason else ""
        return _decision(cur, cur, f"paused by {p.by}{why}", False, ())
    pin = history.pin
    if pin is not None and pin.until > now:
        n = clamp(pin.replicas, policy)
        why = f" ({pin.reason})" if pin.reason else ""
        left = pin.until - now
        return _decision(
            cur, n, f"pinned to {n} by {pin.by}{why} for another {left:.0f}s", False, ()
        )

    drift = history.autoscaled is not None and history.autoscaled != cur
    base = history.autoscaled if history.autoscaled is not None else cur
    warm = current.warm(now, policy.warmup_s)
    warming = len(current.started_at) - warm
    verdicts = tuple(
        evaluate_check(c, samples.get(c.name, ()), base, warm, warming, policy, now)
        for c in policy.checks
    )
    ups = [v for v in verdicts if v.vote == "up"]
    downs = [v for v in verdicts if v.vote == "down"]
    missing = [v.check for v in verdicts if v.vote == "no_data"]
    notes: list[str] = []
    if drift:
        notes.append(
            f"service ran {cur} after an outside change, restoring the autoscaled count {base}"
        )

    wait_up = remaining_wait(_last(history.actions, "up"), policy.scale_up_wait_s, now)
    wait_down = remaining_wait(_last(history.actions, "down"), policy.scale_down_cooldown_s, now)
    vote: Vote = "hold"
    wanted = base
    strategy = policy.strategy
    if ups:
        best = max(ups, key=lambda v: v.wanted or 0)
        vote, wanted = "up", best.wanted or base
        strategy = policy.strategy_of(best.check)
        notes.append(f"{best.check} {best.reason}")
    elif downs and len(downs) == len(verdicts):
        best = max(downs, key=lambda v: v.wanted or 0)
        vote, wanted = "down", best.wanted if best.wanted is not None else base
        notes.append("; ".join(f"{v.check} {v.reason}" for v in downs))
    else:
        if missing:
            notes.append(f"no data from {', '.join(missing)}: never scaling down on missing data")
        notes.extend(f"{v.check} {v.reason}" for v in verdicts if v.vote == "hold")
        if downs:
            notes.append(f"{', '.join(v.check for v in downs)} would scale down; others hold")

    new = base
    if vote == "up" and strategy == "proportional":
        up = policy.up_policy
        start = period_start_count(history.actions, base, now, up.period_s)
        cap = start + up.limit(start)
        new = max(base, min(wanted, cap))
        if new < wanted:
            notes.append(
                f"up-policy: at most +{up.limit(start)} from {start} per {up.period_s:g}s"
            )
    elif vote in ("up", "down") and wait_up > 0:
        notes.append(f"waiting {wait_up:.0f}s more after the last scale-up")
    elif vote == "down" and wait_down > 0:
        notes.append(f"scale-down cool-down: {wait_down:.0f}s left")
    elif vote == "down" and warming > 0:
        notes.append(f"{warming} replicas still warming up; no scale-down until they count")
    elif vote == "up":
        limit = up_step_limit(base, policy)
        new = min(wanted, base + limit)
        if new < wanted:
            notes.append(f"step limited to +{limit}")
    elif vote == "down":
        new = max(wanted, base - policy.down_max_step)
        if new > wanted:
            notes.append(f"step limited to -{policy.down_max_step}")

    bounded = clamp(new, policy)
    if bounded != new:
        notes.append(f"kept within [{policy.min}, {policy.max}]")
    new = bounded
    if new < cur and missing and new < clamp(cur, policy):
        new = clamp(cur, policy)
        notes.append(f"keeping {new}: not lowering the count while {missing[0]} has no data")
    if floors:
        top = max(floors, key=lambda f: f.replicas)
        lifted = clamp(top.replicas, policy)
        if lifted > new:
            new = lifted
            notes.append(f"{top.source} floor {lifted}: {top.reason}")
    return _decision(cur, new, "; ".join(notes) or "nothing to do", drift, verdicts)

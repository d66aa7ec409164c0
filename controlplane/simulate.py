"""``tidedesk simulate``: replay a load trace through the daemon's own controller.

The trace is a CSV with header ``t,load`` (``t`` in seconds from the start, ``load`` in the unit
of the policy's first check; each row holds until the next). Only that first check is simulated.
A ``target`` check sees the load as the service total; an ``upper``/``lower`` check sees the load
per ready replica. The load is recorded into a :class:`MemorySource`; every ``interval`` of a
:class:`ManualClock` the real :class:`Controller` evaluates the policy against it and a
:class:`MemoryTarget`, whose scale calls apply at once (new replicas take load after the start-up
delay; a scale-down removes the newest replicas). The simulator accounts, second by second:

* replica-hours (replicas that exist, ready or not),
* the replica-hours of a static deployment sized for the peak (``ceil(peak / capacity)``),
* SLO minutes: time when the load exceeded the ready replicas' capacity,
* actions: how many times the replica count changed.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.clock import ManualClock
from controlplane.controller import Controller
from controlplane.decision import clamp
from controlplane.memory_source import MemorySource
from controlplane.memory_target import MemoryTarget
from controlplane.policy import Policy, PolicyError, Predictive
from controlplane.policy_file import parse_duration, parse_policies
from controlplane.state import ControlPlaneState
from controlplane.telemetry import Telemetry

ACCOUNTING_STEP_S = 1.0  # seconds of simulated time per accounting step
FLAP_WINDOW_S = 600.0  # a scale-down undone by a scale-up within 10 minutes counts as a flap
# --compare: step = the seed's +N % then wait; proportional = HPA-like; scheduled and predictive
# add the calendar's or the forecast's floor to proportional; combined adds both.
COMPARE_STRATEGIES = ("step", "proportional", "scheduled", "predictive", "combined")
LINE_STYLES = ("-", "--", "-.", ":")  # strategies that agree for a while stay distinguishable


class SimulationError(ValueError):
    pass


@dataclass(frozen=True)
class TracePoint:
    t: float
    load: float


@dataclass
class SimulationResult:
    policy: str
    duration_hours: float
    peak_load: float
    capacity_per_replica: float
    startup_delay_s: float
    static_replicas: int
    replica_hours: float
    static_peak_replica_hours: float
    slo_minutes: float
    actions: int
    max_replicas: int
    flaps: int
    timeline: list[tuple[float, float, int, int]]  # (t, load, replicas, ready), per interval

    def summary(self) -> dict[str, Any]:
        saved = 1 - self.replica_hours / self.static_peak_replica_hours
        return {
            "policy": self.policy,
            "replica_hours": round(self.replica_hours, 2),
            "static_peak_replica_hours": round(self.static_peak_replica_hours, 2),
            "slo_minutes": round(self.slo_minutes, 2),
            "actions": self.actions,
            "flaps": self.flaps,
            "saved_percent": round(100 * saved, 1),
            "peak_load": self.peak_load,
            "static_replicas": self.static_replicas,
            "max_replicas": self.max_replicas,
            "duration_hours": round(self.duration_hours, 2),
            "capacity_per_replica": self.capacity_per_replica,
            "startup_delay_s": self.startup_delay_s,
        }


def parse_trace(text: str, source: str = "trace") -> list[TracePoint]:
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != ["t", "load"]:
        raise SimulationError(f"{source}: line 1: header must be 't,load'")
    points: list[TracePoint] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise SimulationError(f"{source}: line {lineno}: expected 2 columns, got {len(row)}")
        try:
            t, load = float(row[0]), float(row[1])
        except ValueError:
            raise SimulationError(f"{source}: line {lineno}: t and load must be numbers") from None
        if not (math.isfinite(t) and math.isfinite(load)) or load < 0 or t < 0:
            raise SimulationError(f"{source}: line {lineno}: t and load must be >= 0")
        if points and t <= points[-1].t:
            raise SimulationError(f"{source}: line {lineno}: t must increase")
        points.append(TracePoint(t, load))
    if len(points) < 2:
        raise SimulationError(f"{source}: needs at least two rows")
    return points


def _load_at(times: Sequence[float], trace: Sequence[TracePoint], t: float) -> float:
    i = bisect.bisect_right(times, t) - 1
    return trace[max(i, 0)].load


def simulate(
    policy: Policy,
    trace: Sequence[TracePoint],
    capacity: float,
    startup_delay_s: float,
    label: str | None = None,
) -> SimulationResult:
    """Replay ``trace`` through the daemon's own :class:`Controller`, with an in-memory metrics
    source and target and a manual clock; the first ``simulation.history`` seconds are history.

    The controller sees absolute time ``simulation.trace_start + t`` (scheduled events and seasons
    are placed by it) and the load ``simulation.metrics_lag`` seconds late (Prometheus scrapes).
    A replica added at ``t`` serves from ``t + startup_delay_s``.
    """
    check = policy.checks[0]
    # The simulator applies every decision: a dry-run policy is simulated as if it acted.
    sim_policy = dataclasses.replace(policy, checks=(check,), dry_run=False)
    if policy.predictive is not None and policy.predictive.check != check.name:
        sim_policy = dataclasses.replace(
            sim_policy, predictive=dataclasses.replace(policy.predictive, check=check.name)
        )
    sim = policy.simulation
    origin = sim.trace_start
    times = [p.t for p in trace]
    t0, t_end = trace[0].t + sim.history_s, trace[-1].t
    if t0 >= t_end:
        raise SimulationError(
            f"simulation.history ({sim.history_s:g}s) leaves nothing of the trace to simulate"
        )
    peak = max(p.load for p in trace if p.t >= t0)
    peak = max(peak, _load_at(times, trace, t0))
    static = max(1, math.ceil(peak / capacity - 1e-9))
    initial = clamp(math.ceil(_load_at(times, trace, t0) / capacity - 1e-9), policy)
    clock = ManualClock(origin + t0)
    warm_since = origin + t0 - startup_delay_s - policy.warmup_s
    target = MemoryTarget(clock, [warm_since] * initial, startup_delay_s)
    # The forecast's history at 60 s whatever the lookback, as this simulator always had it. The
    # daemon asks Prometheus for 14 days at 120 s (its 11,000-point limit); on the Black Friday
    # trace that coarser season flaps twice more (docs/controlplane.md, "How honest").
    metrics = MemorySource(history_max_points=math.inf)
    if check.target is not None:
        # The service total does not depend on the replicas: record the whole trace, each row
        # visible metrics_lag late (the load before the trace is taken to be its first row).
        metrics.record(check.query, origin + trace[0].t, trace[0].load)
        for p in trace:
            metrics.record(check.query, origin + p.t + sim.metrics_lag_s, p.load)
    state = ControlPlaneState([sim_policy])
    controller = Controller(state, metrics, {sim_policy.driver: target}, Telemetry(), clock=clock)
    replica_s = slo_s = 0.0
    n_actions = flaps = 0
    last_down: float | None = None
    max_replicas = initial
    timeline: list[tuple[float, float, int, int]] = []
    idx = bisect.bisect_right(times, t0) - 1
    next_eval = t0
    now = t0
    while now < t_end:
        while idx + 1 < len(trace) and trace[idx + 1].t <= now:
            idx += 1
        load = trace[idx].load
        clock.now = origin + now
        ready = target.ready(clock.now)
        if check.target is None:  # a per-replica level: what the ready replicas each carry
            seen = _load_at(times, trace, now - sim.metrics_lag_s)
            metrics.record(check.query, clock.now, seen / max(ready, 1))
        if now >= next_eval:
            entry = controller.evaluate(sim_policy.name)
            if entry is not None and entry["outcome"] == "scaled":
                n_actions += 1
                if entry["direction"] == "down":
                    last_down = now
                elif last_down is not None and now - last_down <= FLAP_WINDOW_S:
                    flaps += 1
                max_replicas = max(max_replicas, target.replicas)
            timeline.append((now - t0, load, target.replicas, ready))
            next_eval += policy.interval_s
        step = min(ACCOUNTING_STEP_S, t_end - now)
        ready = target.ready(clock.now)
        replica_s += target.replicas * step
        if load > ready * capacity + 1e-9:
            slo_s += step
        now += step
    duration_h = (t_end - t0) / 3600.0
    return SimulationResult(
        policy=label or policy.name,
        duration_hours=duration_h,
        peak_load=peak,
        capacity_per_replica=capacity,
        startup_delay_s=startup_delay_s,
        static_replicas=static,
        replica_hours=replica_s / 3600.0,
        static_peak_replica_hours=static * duration_h,
        slo_minutes=slo_s / 60.0,
        actions=n_actions,
        max_replicas=max_replicas,
        flaps=flaps,
        timeline=timeline,
    )


def variant(policy: Policy, name: str) -> Policy:
    """The policy as one strategy of ``--compare`` sees it (see COMPARE_STRATEGIES)."""
    checks = tuple(dataclasses.replace(c, strategy=None) for c in policy.checks)
    plain = dataclasses.replace(policy, checks=checks, events=(), predictive=None)
    if name == "step":
        return dataclasses.replace(plain, strategy="step")
    prop = dataclasses.replace(plain, strategy="proportional")
    if name == "proportional":
        return prop
    if name in ("scheduled", "combined") and not policy.events:
        raise SimulationError(
            f"--compare {name}: the policy file has no events for policy {policy.name!r}"
        )
    predictive = policy.predictive
    if name in ("predictive", "combined") and predictive is None:
        target = next((c.name for c in policy.checks if c.target is not None), None)
        if target is None:
            raise SimulationError(f"--compare {name}: policy {policy.name!r} has no target check")
        predictive = Predictive(check=target)
    if name == "scheduled":
        return dataclasses.replace(prop, events=policy.events)
    if name == "predictive":
        return dataclasses.replace(prop, predictive=predictive)
    if name == "combined":
        return dataclasses.replace(prop, events=policy.events, predictive=predictive)
    names = ", ".join(COMPARE_STRATEGIES)
    raise SimulationError(f"--compare: unknown strategy {name!r} (choose from {names})")


def compare(
    policy: Policy,
    trace: Sequence[TracePoint],
    capacity: float,
    startup_delay_s: float,
    names: Sequence[str],
) -> list[SimulationResult]:
    variants = [variant(policy, n) for n in names]  # all errors before the first long run
    return [
        simulate(v, trace, capacity, startup_delay_s, label=n)
        for v, n in zip(variants, names, strict=True)
    ]


def comparison_table(results: Sequence[SimulationResult]) -> str:
    head = (
        "| strategy | replica-hours | share of static peak | SLO minutes | SLO share of time "
        "| actions | flaps | max replicas |"
    )
    rows = [head, "|" + " --- |" * 8]
    for r in results:
        share = r.replica_hours / r.static_peak_replica_hours
        slo_share = r.slo_minutes / (r.duration_hours * 60) if r.duration_hours else 0.0
        rows.append(
            f"| {r.policy} | {r.replica_hours:.1f} | {100 * share:.1f}% | {r.slo_minutes:.2f} "
            f"| {100 * slo_share:.2f}% | {r.actions} | {r.flaps} | {r.max_replicas} |"
        )
    r0 = results[0]
    rows.append(
        f"\nstatic peak: {r0.static_replicas} replicas x {r0.duration_hours:.1f} h = "
        f"{r0.static_peak_replica_hours:.1f} replica-hours; peak load {r0.peak_load:g}, "
        f"{r0.capacity_per_replica:g} per replica, start-up {r0.startup_delay_s:g}s; "
        f"a flap is a scale-down undone within {FLAP_WINDOW_S / 60:g} min"
    )
    return "\n".join(rows)


def plot(result: SimulationResult, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [t / 3600.0 for t, *_ in result.timeline]
    load = [r[1] for r in result.timeline]
    replicas = [r[2] for r in result.timeline]
    capacity = [r[3] * result.capacity_per_replica for r in result.timeline]
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.plot(hours, load, color="tab:blue", linewidth=0.9, label="load")
    ax.step(hours, capacity, where="post", color="tab:green", linewidth=1.1,
            label="ready capacity")  # fmt: skip
    ax.set_xlabel("hours")
    ax.set_ylabel("load")
    ax2 = ax.twinx()
    ax2.step(hours, replicas, where="post", color="tab:orange", linewidth=1.1, label="replicas")
    ax2.set_ylabel("replicas")
    ax2.set_ylim(0, max(replicas) * 1.15 + 1)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    s = result.summary()
    ax.set_title(
        f"{title}: {s['replica_hours']} replica-h vs {s['static_peak_replica_hours']} static, "
        f"SLO {s['slo_minutes']} min, {s['actions']} actions"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_compare(results: Sequence[SimulationResult], out: Path, title: str) -> None:
    """One figure: the load and each strategy's ready capacity, the whole run and a zoom on the
    busiest moment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = results[0].timeline
    hours = [t / 3600.0 for t, *_ in base]
    load = [r[1] for r in base]
    peak_at = hours[max(range(len(load)), key=load.__getitem__)]
    fig, (full, zoom) = plt.subplots(2, 1, figsize=(12, 8))
    for ax, (lo, hi) in ((full, (hours[0], hours[-1])), (zoom, (peak_at - 0.75, peak_at + 1.5))):
        keep = [i for i, h in enumerate(hours) if lo <= h <= hi]
        ax.plot([hours[i] for i in keep], [load[i] for i in keep], color="black",
                linewidth=1.0, label="load")  # fmt: skip
        for n, r in enumerate(results):
            s = r.summary()
            ax.step(
                [r.timeline[i][0] / 3600.0 for i in keep],
                [r.timeline[i][3] * r.capacity_per_replica for i in keep],
                where="post", linewidth=1.2, linestyle=LINE_STYLES[n % len(LINE_STYLES)],
                label=f"{r.policy}: {s['replica_hours']} replica-h, SLO {s['slo_minutes']} min, "
                f"{s['actions']} actions",
            )  # fmt: skip
        ax.set_xlabel("hours")
        ax.set_ylabel("load / ready capacity")
    full.legend(loc="upper left", fontsize=8)
    full.set_title(f"{title}: ready capacity by strategy (static peak "
                   f"{results[0].static_peak_replica_hours:.0f} replica-h)")  # fmt: skip
    zoom.set_title("around the peak")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tidedesk simulate",
        description="Replay a load trace (CSV t,load) through the control plane's decision "
        "module and report replica-hours, SLO minutes and scale actions.",
    )
    p.add_argument("--policy", required=True, metavar="FILE", help="policy YAML file")
    p.add_argument("--trace", required=True, metavar="FILE.csv", help="CSV with header t,load")
    p.add_argument("--name", help="which policy of the file (default: the first)")
    p.add_argument(
        "--capacity",
        type=float,
        metavar="LOAD",
        help="load one ready replica serves (default: the policy's "
        "simulation.capacity_per_replica)",
    )
    p.add_argument(
        "--startup-delay",
        metavar="DURATION",
        help="time before a new replica takes load, e.g. 30s (default: the policy's "
        "simulation.startup_delay)",
    )
    p.add_argument(
        "--compare",
        metavar="LIST",
        help="compare strategies on the trace, e.g. step,proportional,scheduled,"
        f"predictive (choose from {', '.join(COMPARE_STRATEGIES)})",
    )
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="draw load, capacity and replicas")
    return p  # fmt: skip


def run(args: argparse.Namespace) -> list[SimulationResult]:
    try:
        policies = parse_policies(Path(args.policy).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimulationError(f"--policy: cannot read {args.policy}: {exc}") from None
    except PolicyError as exc:
        raise SimulationError(f"{args.policy}: {exc}") from None
    if args.name:
        chosen = [p for p in policies if p.name == args.name]
        if not chosen:
            names = ", ".join(p.name for p in policies)
            raise SimulationError(f"--name: no policy {args.name!r} (have: {names})")
        policy = chosen[0]
    else:
        policy = policies[0]
    try:
        trace = parse_trace(Path(args.trace).read_text(encoding="utf-8"), args.trace)
    except OSError as exc:
        raise SimulationError(f"--trace: cannot read {args.trace}: {exc}") from None
    capacity = args.capacity or policy.simulation.capacity_per_replica
    if capacity is None or capacity <= 0:
        raise SimulationError(
            "--capacity: give the load one replica serves, or set "
            "simulation.capacity_per_replica in the policy"
        )
    delay = policy.simulation.startup_delay_s
    if args.startup_delay is not None:
        try:
            delay = parse_duration(args.startup_delay, "--startup-delay")
        except PolicyError as exc:
            raise SimulationError(str(exc)) from None
    if args.compare:
        strategies = [n.strip() for n in args.compare.split(",") if n.strip()]
        if not strategies:
            choices = ", ".join(COMPARE_STRATEGIES)
            raise SimulationError(f"--compare: name strategies from {choices}")
        return compare(policy, trace, capacity, delay, strategies)
    return [simulate(policy, trace, capacity, delay)]


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        results = run(args)
    except SimulationError as exc:
        print(f"tidedesk simulate: {exc}", file=sys.stderr)
        return 2
    if args.compare:
        print(comparison_table(results))
        figures: Any = [r.summary() for r in results]
    else:
        summary = figures = results[0].summary()
        print(
            f"policy {summary['policy']}: {summary['duration_hours']} h, peak load "
            f"{summary['peak_load']:g}, {summary['capacity_per_replica']:g} per replica\n"
            f"  replica-hours            {summary['replica_hours']}\n"
            f"  static peak ({summary['static_replicas']} replicas)  "
            f"{summary['static_peak_replica_hours']}  (saved {summary['saved_percent']}%)\n"
            f"  SLO minutes              {summary['slo_minutes']}\n"
            f"  scale actions            {summary['actions']}  "
            f"(max {summary['max_replicas']} replicas)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        try:
            if args.compare:
                plot_compare(results, Path(args.plot), Path(args.trace).stem)
            else:
                plot(results[0], Path(args.plot), Path(args.trace).stem)
        except ImportError:
            print("tidedesk simulate: --plot needs matplotlib: pip install 'tidedesk[plot]'",
                  file=sys.stderr)  # fmt: skip
            return 2
        except OSError as exc:
            print(f"tidedesk simulate: --plot: cannot write {args.plot}: {exc}", file=sys.stderr)
            return 2
    return 0

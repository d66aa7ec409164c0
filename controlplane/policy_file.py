"""The policy file: YAML text in, frozen :class:`controlplane.policy.Policy` objects out.

A policy file is YAML with a top-level ``policies`` list (see ``controlplane/examples/policies.yml``
and ``docs/controlplane.md``). :func:`parse_policies` turns the text into frozen policies or
raises :class:`controlplane.policy.PolicyError` whose message starts with the path of the
offending field (``policies[0].checks[1].upper: ...``). Reading the file is the caller's job, so
this module does no I/O.

Durations are written as a number of seconds or a string with a unit (``500ms``, ``30s``, ``5m``,
``1h``); they are stored as float seconds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import yaml

from controlplane.policy import (
    DEFAULT_CHECK_FOR_S,
    DEFAULT_DOWN_MAX_STEP,
    DEFAULT_INTERVAL_S,
    DEFAULT_PREDICT_LOOKBACK_S,
    DEFAULT_PREDICT_MARGIN,
    DEFAULT_PREDICT_REFRESH_S,
    DEFAULT_PREDICT_STARTUP_S,
    DEFAULT_SCALE_DOWN_COOLDOWN_S,
    DEFAULT_SCALE_DOWN_STABILIZATION_S,
    DEFAULT_SCALE_UP_WAIT_S,
    DEFAULT_SIM_STARTUP_DELAY_S,
    DEFAULT_TOLERANCE,
    DEFAULT_UP_MAX_PERCENT,
    DEFAULT_UP_MIN_STEP,
    DEFAULT_UP_POLICY_PERCENT,
    DEFAULT_UP_POLICY_PERIOD_S,
    DEFAULT_UP_POLICY_REPLICAS,
    DEFAULT_WARMUP_S,
    DRIVERS,
    STRATEGIES,
    Check,
    Policy,
    PolicyError,
    Predictive,
    Simulation,
    Strategy,
    UpPolicy,
)
from controlplane.schedule import DEFAULT_EVENT_LEAD_S, MAX_EVENT_LENGTH_S, ScheduledEvent

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(raw: object, where: str) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"7d"``."""
    if isinstance(raw, bool):
        raise PolicyError(where, f"expected a duration like 30s or 5m, got {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        m = _DURATION_RE.match(raw)
        if m is None:
            raise PolicyError(where, f"expected a duration like 30s, 5m, 1h or 7d, got {raw!r}")
        value = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise PolicyError(where, f"expected a duration like 30s or 5m, got {raw!r}")
    if not math.isfinite(value) or value < 0:
        raise PolicyError(where, f"must be a non-negative duration, got {raw!r}")
    return value


def _number(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise PolicyError(where, f"expected a number, got {raw!r}")
    return float(raw)


def _int(raw: object, where: str, lo: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise PolicyError(where, f"expected a whole number, got {raw!r}")
    if raw < lo:
        raise PolicyError(where, f"must be at least {lo}, got {raw}")
    return raw


def _str(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise PolicyError(where, f"expected a non-empty string, got {raw!r}")
    return raw.strip()


def _mapping(raw: object, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise PolicyError(where, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _reject_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            allowed = ", ".join(sorted(known))
            path = f"{where}.{key}" if where else str(key)
            raise PolicyError(path, f"unknown field (allowed: {allowed})")


def _named(data: Mapping[str, Any], known: set[str], required: Sequence[str], where: str) -> str:
    """Check a mapping's keys and return its ``name``, which must be a usable identifier."""
    _reject_unknown(data, known, where)
    for key in ("name", *required):
        if key not in data:
            raise PolicyError(f"{where}.{key}", "missing")
    name = _str(data["name"], f"{where}.name")
    if not _NAME_RE.match(name):
        raise PolicyError(
            f"{where}.name", f"use letters, digits, '.', '_' or '-' (max 63), got {name!r}"
        )
    return name


EARLIEST_TS = 0.0
LATEST_TS = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def parse_time(raw: object, where: str) -> float:
    """Unix seconds from an ISO 8601 date-time with a zone (``2026-11-28T20:00:00+08:00``)."""
    if isinstance(raw, datetime):
        when = raw
    elif isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            raise PolicyError(
                where, f"expected a date-time like 2026-11-28T20:00:00Z, got {raw!r}"
            ) from None
    elif isinstance(raw, date):
        raise PolicyError(where, f"give a time of day and a zone, e.g. {raw}T20:00:00Z")
    else:
        raise PolicyError(where, f"expected a date-time like 2026-11-28T20:00:00Z, got {raw!r}")
    if when.tzinfo is None:
        # YAML turns a zone-less timestamp into a naive UTC datetime; a string stays naive.
        if isinstance(raw, datetime):
            when = when.replace(tzinfo=UTC)
        else:
            raise PolicyError(where, f"add a time zone (Z or +08:00) to {raw!r}")
    ts = when.timestamp()
    if not EARLIEST_TS <= ts <= LATEST_TS:
        # 9999-12-31T23:59-08:00 is year 10000 in UTC: nothing could print it again.
        raise PolicyError(where, f"{raw!r} is out of range: give a date between 1970 and 9998")
    return ts


def _strategy(raw: object, where: str) -> Strategy:
    if raw not in STRATEGIES:
        raise PolicyError(where, f"must be one of {', '.join(STRATEGIES)}; got {raw!r}")
    return raw


_CHECK_KEYS = {"name", "query", "for", "target", "upper", "lower", "strategy"}
_POLICY_KEYS = {
    "name", "service", "driver", "min", "max", "interval", "warmup", "scale_up_wait",
    "scale_down_cooldown", "scale_down_stabilization", "tolerance", "step", "dry_run",
    "checks", "group", "namespace", "simulation", "strategy", "up_policy", "predictive",
}  # fmt: skip
_STEP_KEYS = {"up_max_percent", "up_min", "down_max"}
_SIM_KEYS = {"capacity_per_replica", "startup_delay", "trace_start", "metrics_lag", "history"}
_UP_POLICY_KEYS = {"percent", "replicas", "period"}
_PREDICT_KEYS = {"check", "lookback", "margin", "startup", "refresh"}
_EVENT_KEYS = {"name", "start", "end", "lead", "min_replicas"}


def parse_check(raw: object, where: str) -> Check:
    data = _mapping(raw, where)
    _reject_unknown(data, _CHECK_KEYS, where)
    if "query" not in data:
        raise PolicyError(f"{where}.query", "missing; give the PromQL expression to evaluate")
    query = _str(data["query"], f"{where}.query")
    name = _str(data.get("name", query[:40]), f"{where}.name")
    for_s = parse_duration(data.get("for", DEFAULT_CHECK_FOR_S), f"{where}.for")
    target = upper = lower = None
    if "target" in data:
        if "upper" in data or "lower" in data:
            raise PolicyError(where, "give either target or upper/lower thresholds, not both")
        target = _number(data["target"], f"{where}.target")
        if target <= 0:
            raise PolicyError(f"{where}.target", f"must be greater than 0, got {target:g}")
    else:
        if "upper" not in data or "lower" not in data:
            missing = "upper" if "upper" not in data else "lower"
            raise PolicyError(
                f"{where}.{missing}", "missing; a check needs target, or both upper and lower"
            )
        upper = _number(data["upper"], f"{where}.upper")
        lower = _number(data["lower"], f"{where}.lower")
        if lower < 0:
            raise PolicyError(f"{where}.lower", f"must be at least 0, got {lower:g}")
        if not lower < upper:
            raise PolicyError(
                f"{where}.lower", f"must be below upper ({upper:g}) to leave a dead band"
            )
    strategy = None if "strategy" not in data else _strategy(data["strategy"], f"{where}.strategy")
    return Check(
        name=name, query=query, for_s=for_s, target=target, upper=upper, lower=lower,
        strategy=strategy,
    )  # fmt: skip


def parse_up_policy(raw: object, where: str) -> UpPolicy:
    data = _mapping(raw, where)
    _reject_unknown(data, _UP_POLICY_KEYS, where)
    percent = _number(data.get("percent", DEFAULT_UP_POLICY_PERCENT), f"{where}.percent")
    if percent <= 0:
        raise PolicyError(f"{where}.percent", f"must be greater than 0, got {percent:g}")
    period = parse_duration(data.get("period", DEFAULT_UP_POLICY_PERIOD_S), f"{where}.period")
    if period <= 0:
        raise PolicyError(f"{where}.period", "must be greater than 0")
    replicas = _int(data.get("replicas", DEFAULT_UP_POLICY_REPLICAS), f"{where}.replicas", 1)
    return UpPolicy(percent=percent, replicas=replicas, period_s=period)


def parse_predictive(raw: object, where: str, checks: Sequence[Check]) -> Predictive:
    data = _mapping(raw, where)
    _reject_unknown(data, _PREDICT_KEYS, where)
    targets = [c.name for c in checks if c.target is not None]
    if not targets:
        raise PolicyError(where, "needs a check with a target (a service total to forecast)")
    check = _str(data.get("check", targets[0]), f"{where}.check")
    if check not in targets:
        have = ", ".join(targets)
        raise PolicyError(f"{where}.check", f"name a check with a target ({have}), not {check!r}")
    lookback = parse_duration(data.get("lookback", DEFAULT_PREDICT_LOOKBACK_S), f"{where}.lookback")
    if lookback < 86400:
        raise PolicyError(f"{where}.lookback", "must be at least 1d (24h) for a daily season")
    margin = _number(data.get("margin", DEFAULT_PREDICT_MARGIN), f"{where}.margin")
    if not 0 <= margin <= 1:
        raise PolicyError(f"{where}.margin", f"must be in [0, 1], got {margin:g}")
    refresh = parse_duration(data.get("refresh", DEFAULT_PREDICT_REFRESH_S), f"{where}.refresh")
    return Predictive(
        check=check,
        lookback_s=lookback,
        margin=margin,
        startup_s=parse_duration(
            data.get("startup", DEFAULT_PREDICT_STARTUP_S), f"{where}.startup"
        ),
        refresh_s=max(refresh, 1.0),
    )


def parse_event(
    raw: object, where: str, bounds: Mapping[str, tuple[int, int]], source: str = "file"
) -> ScheduledEvent:
    """One planned event; ``bounds`` maps each policy name to its ``(min, max)``."""
    data = _mapping(raw, where)
    name = _named(data, _EVENT_KEYS, ("start", "end", "min_replicas"), where)
    start = parse_time(data["start"], f"{where}.start")
    end = parse_time(data["end"], f"{where}.end")
    if end <= start:
        raise PolicyError(f"{where}.end", "must be after start")
    if end - start > MAX_EVENT_LENGTH_S:
        raise PolicyError(f"{where}.end", "an event lasts at most 14 days; raise min instead")
    lead = parse_duration(data.get("lead", DEFAULT_EVENT_LEAD_S), f"{where}.lead")
    reps = _mapping(data["min_replicas"], f"{where}.min_replicas")
    if not reps:
        raise PolicyError(f"{where}.min_replicas", "name at least one policy, e.g. {chatnode: 12}")
    replicas: list[tuple[str, int]] = []
    for policy, n in reps.items():
        at = f"{where}.min_replicas.{policy}"
        if policy not in bounds:
            known = ", ".join(sorted(bounds))
            raise PolicyError(at, f"no policy named {policy!r} (have: {known})")
        lo, hi = bounds[policy]
        count = _int(n, at, 0)
        if not lo <= count <= hi:
            raise PolicyError(at, f"must be within the policy's bounds [{lo}, {hi}], got {count}")
        replicas.append((str(policy), count))
    return ScheduledEvent(name, start, end, lead, tuple(replicas), source=source)


def parse_policy(raw: object, where: str) -> Policy:
    data = _mapping(raw, where)
    name = _named(data, _POLICY_KEYS, ("service", "driver", "min", "max", "checks"), where)
    driver = data["driver"]
    if driver not in DRIVERS:
        raise PolicyError(f"{where}.driver", f"must be one of swarm, nomad; got {driver!r}")
    lo = _int(data["min"], f"{where}.min", 0)
    hi = _int(data["max"], f"{where}.max", 1)
    if lo > hi:
        raise PolicyError(f"{where}.min", f"must not exceed max ({hi}), got {lo}")
    raw_checks = data["checks"]
    if not isinstance(raw_checks, Sequence) or isinstance(raw_checks, str) or not raw_checks:
        raise PolicyError(f"{where}.checks", "expected a non-empty list of checks")
    checks = tuple(parse_check(c, f"{where}.checks[{i}]") for i, c in enumerate(raw_checks))
    names = [c.name for c in checks]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise PolicyError(f"{where}.checks[{i}].name", f"duplicate check name {n!r}")
    interval = parse_duration(data.get("interval", DEFAULT_INTERVAL_S), f"{where}.interval")
    if interval <= 0:
        raise PolicyError(f"{where}.interval", "must be greater than 0")
    tolerance = _number(data.get("tolerance", DEFAULT_TOLERANCE), f"{where}.tolerance")
    if not 0 <= tolerance < 1:
        raise PolicyError(f"{where}.tolerance", f"must be in [0, 1), got {tolerance:g}")
    step = _mapping(data.get("step", {}), f"{where}.step")
    _reject_unknown(step, _STEP_KEYS, f"{where}.step")
    up_pct = _number(
        step.get("up_max_percent", DEFAULT_UP_MAX_PERCENT), f"{where}.step.up_max_percent"
    )
    if up_pct <= 0:
        raise PolicyError(f"{where}.step.up_max_percent", "must be greater than 0")
    sim = _mapping(data.get("simulation", {}), f"{where}.simulation")
    _reject_unknown(sim, _SIM_KEYS, f"{where}.simulation")
    capacity = None
    if "capacity_per_replica" in sim:
        capacity = _number(sim["capacity_per_replica"], f"{where}.simulation.capacity_per_replica")
        if capacity <= 0:
            raise PolicyError(f"{where}.simulation.capacity_per_replica", "must be greater than 0")
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise PolicyError(f"{where}.dry_run", f"expected true or false, got {dry_run!r}")
    group = data.get("group")
    namespace = data.get("namespace")
    lag = parse_duration(sim.get("metrics_lag", 0), f"{where}.simulation.metrics_lag")
    trace_start = (
        0.0 if "trace_start" not in sim
        else parse_time(sim["trace_start"], f"{where}.simulation.trace_start")
    )  # fmt: skip
    predictive = (
        None if data.get("predictive") is None
        else parse_predictive(data["predictive"], f"{where}.predictive", checks)
    )  # fmt: skip
    return Policy(
        name=name,
        service=_str(data["service"], f"{where}.service"),
        driver=driver,
        min=lo,
        max=hi,
        checks=checks,
        interval_s=interval,
        warmup_s=parse_duration(data.get("warmup", DEFAULT_WARMUP_S), f"{where}.warmup"),
        scale_up_wait_s=parse_duration(
            data.get("scale_up_wait", DEFAULT_SCALE_UP_WAIT_S), f"{where}.scale_up_wait"
        ),
        scale_down_cooldown_s=parse_duration(
            data.get("scale_down_cooldown", DEFAULT_SCALE_DOWN_COOLDOWN_S),
            f"{where}.scale_down_cooldown",
        ),
        scale_down_stabilization_s=parse_duration(
            data.get("scale_down_stabilization", DEFAULT_SCALE_DOWN_STABILIZATION_S),
            f"{where}.scale_down_stabilization",
        ),
        tolerance=tolerance,
        up_max_percent=up_pct,
        up_min_step=_int(step.get("up_min", DEFAULT_UP_MIN_STEP), f"{where}.step.up_min", 1),
        down_max_step=_int(
            step.get("down_max", DEFAULT_DOWN_MAX_STEP), f"{where}.step.down_max", 1
        ),
        dry_run=dry_run,
        group=None if group is None else _str(group, f"{where}.group"),
        namespace=None if namespace is None else _str(namespace, f"{where}.namespace"),
        simulation=Simulation(
            capacity_per_replica=capacity,
            startup_delay_s=parse_duration(
                sim.get("startup_delay", DEFAULT_SIM_STARTUP_DELAY_S),
                f"{where}.simulation.startup_delay",
            ),
            trace_start=trace_start,
            metrics_lag_s=lag,
            history_s=parse_duration(sim.get("history", 0), f"{where}.simulation.history"),
        ),
        strategy=_strategy(data.get("strategy", "step"), f"{where}.strategy"),
        up_policy=parse_up_policy(data.get("up_policy", {}), f"{where}.up_policy"),
        predictive=predictive,
    )


def parse_policies(text: str) -> tuple[Policy, ...]:
    """Policies from the YAML text of a policy file; :class:`PolicyError` names a bad field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise PolicyError(where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    top = _mapping(doc if doc is not None else {}, "policies file")
    _reject_unknown(top, {"policies", "events"}, "")
    raw = top.get("policies")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise PolicyError("policies", "expected a non-empty list of policies")
    policies = tuple(parse_policy(p, f"policies[{i}]") for i, p in enumerate(raw))
    seen: set[str] = set()
    for i, p in enumerate(policies):
        if p.name in seen:
            raise PolicyError(f"policies[{i}].name", f"duplicate policy name {p.name!r}")
        seen.add(p.name)
    raw_events = top.get("events") or []
    if not isinstance(raw_events, Sequence) or isinstance(raw_events, str):
        raise PolicyError("events", "expected a list of events")
    bounds = {p.name: (p.min, p.max) for p in policies}
    events = [parse_event(e, f"events[{i}]", bounds) for i, e in enumerate(raw_events)]
    for i, e in enumerate(events):
        if e.name in [x.name for x in events[:i]]:
            raise PolicyError(f"events[{i}].name", f"duplicate event name {e.name!r}")
    return tuple(
        dataclasses.replace(p, events=tuple(e for e in events if e.floor_for(p.name) is not None))
        for p in policies
    )

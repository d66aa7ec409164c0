"""Scaling policies: what to scale, between which bounds, on which checks, how carefully.

A policy file is YAML with a top-level ``policies`` list (see ``controlplane/examples/policies.yml``
and ``docs/controlplane.md``). :func:`parse_policies` turns the text into frozen
:class:`Policy` objects or raises :class:`PolicyError` whose message starts with the path of the
offending field (``policies[0].checks[1].upper: ...``). Reading the file is the caller's job, so
this module stays free of I/O and the pure decision module can import it.

Durations are written as a number of seconds or a string with a unit (``500ms``, ``30s``, ``5m``,
``1h``); they are stored as float seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

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

Driver = Literal["swarm", "nomad"]
DRIVERS: tuple[Driver, ...] = ("swarm", "nomad")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


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

    @property
    def mode(self) -> Literal["target", "thresholds"]:
        return "target" if self.target is not None else "thresholds"


@dataclass(frozen=True)
class Simulation:
    """Parameters only ``tidedesk simulate`` uses."""

    capacity_per_replica: float | None = None
    startup_delay_s: float = DEFAULT_SIM_STARTUP_DELAY_S


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
                    )
                    if v is not None
                }
                for c in self.checks
            ],
        }


def parse_duration(raw: object, where: str) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"`` or ``"1h"``."""
    if isinstance(raw, bool):
        raise PolicyError(where, f"expected a duration like 30s or 5m, got {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        m = _DURATION_RE.match(raw)
        if m is None:
            raise PolicyError(where, f"expected a duration like 30s, 5m or 1h, got {raw!r}")
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


_CHECK_KEYS = {"name", "query", "for", "target", "upper", "lower"}
_POLICY_KEYS = {
    "name", "service", "driver", "min", "max", "interval", "warmup", "scale_up_wait",
    "scale_down_cooldown", "scale_down_stabilization", "tolerance", "step", "dry_run",
    "checks", "group", "namespace", "simulation",
}  # fmt: skip
_STEP_KEYS = {"up_max_percent", "up_min", "down_max"}
_SIM_KEYS = {"capacity_per_replica", "startup_delay"}


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
    return Check(name=name, query=query, for_s=for_s, target=target, upper=upper, lower=lower)


def parse_policy(raw: object, where: str) -> Policy:
    data = _mapping(raw, where)
    _reject_unknown(data, _POLICY_KEYS, where)
    for key in ("name", "service", "driver", "min", "max", "checks"):
        if key not in data:
            raise PolicyError(f"{where}.{key}", "missing")
    name = _str(data["name"], f"{where}.name")
    if not _NAME_RE.match(name):
        raise PolicyError(
            f"{where}.name", f"use letters, digits, '.', '_' or '-' (max 63), got {name!r}"
        )
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
        ),
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
    _reject_unknown(top, {"policies"}, "")
    raw = top.get("policies")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise PolicyError("policies", "expected a non-empty list of policies")
    policies = tuple(parse_policy(p, f"policies[{i}]") for i, p in enumerate(raw))
    seen: set[str] = set()
    for i, p in enumerate(policies):
        if p.name in seen:
            raise PolicyError(f"policies[{i}].name", f"duplicate policy name {p.name!r}")
        seen.add(p.name)
    return policies

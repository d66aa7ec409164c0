"""The routing rules model that chat nodes and routers both read (pure: no I/O; ``now`` is
passed in).

Rules come from YAML, first match wins::

    vip_tags: [vip]            # visitors with these tags wait ahead of everyone else
    rules:
      - name: vip
        match: {tags: [vip]}   # any of these tags
        pool: experts
        fallback: general      # optional
        max_wait_s: 60         # optional: after this long in the queue, move to the fallback
      - name: everyone         # no 'match': matches every visitor
        pool: general

Optional business hours (outside them every new chat becomes an offline ticket)::

    business_hours:
      timezone: Asia/Shanghai      # IANA name
      days: [mon, tue, wed, thu, fri]
      open: "09:00"
      close: "18:00"               # may be before open: hours that span midnight
      holidays: ["2026-12-25"]     # optional: closed all day (local dates)

The choice of an agent within a pool is the router's (``routernode/routing.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_POOL = "general"


class RoutingConfigError(ValueError):
    """The routing YAML is invalid; the message names the field."""


@dataclass(frozen=True)
class Rule:
    name: str
    pool: str
    tags: frozenset[str] = frozenset()
    fallback: str | None = None
    max_wait_s: float | None = None

    def matches(self, tags: Iterable[str]) -> bool:
        return not self.tags or bool(self.tags & set(tags))


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class BusinessHours:
    timezone: str
    days: frozenset[int]  # 0 = Monday
    open_minute: int
    close_minute: int
    holidays: frozenset[str] = frozenset()  # local dates, YYYY-MM-DD

    def is_open(self, now: float) -> bool:
        local = dt.datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        if local.date().isoformat() in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        if self.open_minute <= self.close_minute:
            return local.weekday() in self.days and self.open_minute <= minute < self.close_minute
        # Spans midnight: the evening belongs to today, the small hours to yesterday's shift.
        if minute >= self.open_minute:
            return local.weekday() in self.days
        return minute < self.close_minute and (local.weekday() - 1) % 7 in self.days


@dataclass(frozen=True)
class RoutingConfig:
    rules: tuple[Rule, ...]
    vip_tags: frozenset[str] = frozenset({"vip"})
    hours: BusinessHours | None = None

    def is_open(self, now: float) -> bool:
        return self.hours is None or self.hours.is_open(now)

    @property
    def pools(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for rule in self.rules:
            seen[rule.pool] = None
            if rule.fallback:
                seen[rule.fallback] = None
        seen.setdefault(DEFAULT_POOL, None)
        return tuple(seen)

    def rule_for(self, tags: Iterable[str]) -> Rule:
        tag_set = set(tags)
        for rule in self.rules:
            if rule.matches(tag_set):
                return rule
        return Rule(name="default", pool=DEFAULT_POOL)

    def rule_for_pool(self, pool: str) -> Rule | None:
        """The first rule that sends visitors to ``pool`` (for its fallback and max wait)."""
        for rule in self.rules:
            if rule.pool == pool:
                return rule
        return None

    def is_vip(self, tags: Iterable[str]) -> bool:
        return bool(self.vip_tags & set(tags))


DEFAULT_RULES: dict[str, Any] = {
    "vip_tags": ["vip"],
    "rules": [
        {"name": "vip", "match": {"tags": ["vip"]}, "pool": "experts", "fallback": "general",
         "max_wait_s": 60},
        {"name": "new", "match": {"tags": ["new"]}, "pool": "training", "fallback": "general",
         "max_wait_s": 120},
        {"name": "everyone", "pool": "general"},
    ],
}


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RoutingConfigError(f"{field}: must be a non-empty string")
    return value.strip()


def parse_rules(data: Any) -> RoutingConfig:
    if not isinstance(data, dict):
        raise RoutingConfigError("routing file: expected a mapping with 'rules'")
    unknown = set(data) - {"rules", "vip_tags", "business_hours"}
    if unknown:
        raise RoutingConfigError(f"routing file: unknown key(s) {', '.join(sorted(unknown))}; "
                                 "allowed: rules, vip_tags, business_hours")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RoutingConfigError("rules: must be a non-empty list")
    rules = []
    for i, raw in enumerate(raw_rules):
        where = f"rules[{i}]"
        if not isinstance(raw, dict):
            raise RoutingConfigError(f"{where}: must be a mapping")
        unknown = set(raw) - {"name", "match", "pool", "fallback", "max_wait_s"}
        if unknown:
            raise RoutingConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                     "allowed: name, match, pool, fallback, max_wait_s")
        pool = _name(raw.get("pool"), f"{where}.pool")
        tags: frozenset[str] = frozenset()
        match = raw.get("match")
        if match is not None:
            if not isinstance(match, dict) or set(match) != {"tags"}:
                raise RoutingConfigError(f"{where}.match: must be {{tags: [tag, ...]}}")
            if not isinstance(match["tags"], list) or not match["tags"]:
                raise RoutingConfigError(f"{where}.match.tags: must be a non-empty list")
            tags = frozenset(_name(t, f"{where}.match.tags") for t in match["tags"])
        fallback = raw.get("fallback")
        if fallback is not None:
            fallback = _name(fallback, f"{where}.fallback")
            if fallback == pool:
                raise RoutingConfigError(f"{where}.fallback: must differ from pool {pool!r}")
        max_wait = raw.get("max_wait_s")
        if max_wait is not None:
            if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or max_wait < 0:
                raise RoutingConfigError(f"{where}.max_wait_s: must be a number of seconds >= 0")
            if fallback is None:
                raise RoutingConfigError(f"{where}.max_wait_s: needs a 'fallback' pool")
            max_wait = float(max_wait)
        name = _name(raw.get("name", f"rule{i}"), f"{where}.name")
        rules.append(Rule(name=name, pool=pool, tags=tags, fallback=fallback,
                          max_wait_s=max_wait))
    vip = data.get("vip_tags", ["vip"])
    if not isinstance(vip, list):
        raise RoutingConfigError("vip_tags: must be a list of tags")
    hours = data.get("business_hours")
    return RoutingConfig(rules=tuple(rules),
                         vip_tags=frozenset(_name(t, "vip_tags") for t in vip),
                         hours=None if hours is None else _parse_hours(hours))


def _minute(value: Any, field: str) -> int:
    text = str(value)
    try:
        hour, minute = (int(x) for x in text.split(":"))
    except ValueError:
        raise RoutingConfigError(f"{field}: expected HH:MM, got {value!r}") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise RoutingConfigError(f"{field}: expected HH:MM, got {value!r}")
    return hour * 60 + minute


def _parse_hours(raw: Any) -> BusinessHours:
    where = "business_hours"
    if not isinstance(raw, dict):
        raise RoutingConfigError(f"{where}: must be a mapping with timezone, days, open, close")
    unknown = set(raw) - {"timezone", "days", "open", "close", "holidays"}
    if unknown:
        raise RoutingConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                 "allowed: timezone, days, open, close, holidays")
    tz = _name(raw.get("timezone", "UTC"), f"{where}.timezone")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RoutingConfigError(f"{where}.timezone: unknown time zone {tz!r} (use an IANA "
                                 "name like Europe/Berlin)") from None
    days = raw.get("days", list(DAYS[:5]))
    if not isinstance(days, list) or not days or not all(d in DAYS for d in days):
        raise RoutingConfigError(f"{where}.days: must be a list of {', '.join(DAYS)}")
    open_minute = _minute(raw.get("open"), f"{where}.open")
    close_minute = _minute(raw.get("close"), f"{where}.close")
    if open_minute == close_minute:
        raise RoutingConfigError(f"{where}: open and close must differ")
    holidays = raw.get("holidays", [])
    if not isinstance(holidays, list) or not all(_is_date(h) for h in holidays):
        raise RoutingConfigError(f"{where}.holidays: must be a list of dates like 2026-12-25")
    return BusinessHours(tz, frozenset(DAYS.index(d) for d in days), open_minute, close_minute,
                         frozenset(str(h) for h in holidays))


def parse_hours(raw: Any) -> BusinessHours:
    """The ``business_hours`` mapping (a site's too); RoutingConfigError naming the field."""
    return _parse_hours(raw)


def _is_date(value: Any) -> bool:
    try:
        dt.date.fromisoformat(str(value))
    except ValueError:
        return False
    return True

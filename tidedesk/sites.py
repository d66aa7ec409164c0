"""Sites (shops) on one installation (pure): their settings, checked and merged, the routing
each one uses and what its widget is told.

A site's settings are one JSON object (stored by ``tidedesk/storage/sites.py``)::

    {"name": "Tea Shop", "color": "#0f766e", "position": "bottom-right",
     "greeting": "Hi! Ask us anything.", "offline_message": "We are away; leave a message.",
     "prechat_fields": [{"name": "order", "label": "Order number", "type": "text",
                         "required": false}],
     "languages": ["en", "zh-CN"],
     "business_hours": {"timezone": "Europe/Berlin", "days": ["mon", "tue"], "open": "09:00",
                        "close": "17:00", "holidays": ["2026-12-25"]},
     "routing": {"vip_tags": ["vip"], "rules": [{"name": "all", "pool": "tea"}]},
     "bot": {"name": "Tea Bot", "timeout_s": 20, "pool": "tea"}}

``bot``: new conversations of the site go to a bot first. The bot is a webhook receiver
that answers with its API token (``POST /api/v1/conversations/{id}/messages``) and hands the
chat to people with ``POST /api/v1/conversations/{id}/handoff``; one that does not answer a
visitor's message within ``timeout_s`` is handed off automatically (to ``pool``, else the
pool the site's rules choose).

``business_hours`` and ``routing`` use the routing file's format and parser
(:mod:`tidedesk.routing_rules`); a site without them uses the installation's. The site
``default`` always exists (the script tag without ``data-site``).
"""

from __future__ import annotations

import re
from typing import Any

from tidedesk.i18n import LOCALES
from tidedesk.routing_rules import RoutingConfig, RoutingConfigError, parse_hours, parse_rules

DEFAULT_SITE = "default"
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
COLOR_RE = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
FIELD_NAME_RE = re.compile(r"^[a-z0-9_]{1,32}$")
POSITIONS = ("bottom-right", "bottom-left")
FIELD_TYPES = ("text", "email", "phone")
TEXT_MAX = 500
MAX_PRECHAT_FIELDS = 10
FIELDS = ("name", "color", "position", "greeting", "offline_message", "prechat_fields",
          "languages", "business_hours", "routing", "bot")
# A bot must answer a visitor's message within this many seconds, else the chat is handed to
# people: the bounds of a site's ``bot.timeout_s``.
BOT_TIMEOUT_RANGE = (2, 300)


class SiteError(ValueError):
    """A bad site setting; the message names the field and what is allowed."""


def check_site_name(site: str) -> str:
    if not SITE_RE.match(site):
        raise SiteError("site names are 1-64 characters of a-z 0-9 _ -, starting with a "
                        "letter or digit")
    return site


def defaults(site: str) -> dict[str, Any]:
    return {"name": site, "color": "#0f766e", "position": "bottom-right", "greeting": "",
            "offline_message": "", "prechat_fields": [], "languages": list(LOCALES),
            "business_hours": None, "routing": None, "bot": None}


def _text(value: Any, field: str, lo: int = 0, hi: int = TEXT_MAX) -> str:
    if not isinstance(value, str) or not lo <= len(value.strip()) <= hi:
        raise SiteError(f"'{field}' must be a string of {lo}-{hi} characters")
    return value.strip()


def _prechat(value: Any) -> list[dict[str, Any]]:
    where = "prechat_fields"
    if not isinstance(value, list) or len(value) > MAX_PRECHAT_FIELDS:
        raise SiteError(f"'{where}' must be a list of at most {MAX_PRECHAT_FIELDS} fields")
    out, seen = [], set()
    for i, raw in enumerate(value):
        if not isinstance(raw, dict) or set(raw) - {"name", "label", "type", "required"}:
            raise SiteError(f"'{where}[{i}]' must be {{name, label, type?, required?}}")
        name = raw.get("name")
        if not isinstance(name, str) or not FIELD_NAME_RE.match(name) or name in seen:
            raise SiteError(f"'{where}[{i}].name' must be a unique name of 1-32 characters "
                            "a-z 0-9 _")
        seen.add(name)
        kind = raw.get("type", "text")
        if kind not in FIELD_TYPES:
            raise SiteError(f"'{where}[{i}].type' must be one of {', '.join(FIELD_TYPES)}")
        required = raw.get("required", False)
        if not isinstance(required, bool):
            raise SiteError(f"'{where}[{i}].required' must be true or false")
        out.append({"name": name, "label": _text(raw.get("label"), f"{where}[{i}].label", 1, 80),
                    "type": kind, "required": required})
    return out


def _bot(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"name", "timeout_s", "pool"}:
        raise SiteError("'bot' must be {name, timeout_s?, pool?} or null")
    lo, hi = BOT_TIMEOUT_RANGE
    timeout = value.get("timeout_s", 20)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not lo <= timeout <= hi:
        raise SiteError(f"'bot.timeout_s' must be {lo}-{hi} seconds")
    pool = value.get("pool")
    if pool is not None and (not isinstance(pool, str) or not FIELD_NAME_RE.match(pool)):
        raise SiteError("'bot.pool' must be a pool name (a-z 0-9 _)")
    return {"name": _text(value.get("name"), "bot.name", 1, 64), "timeout_s": timeout,
            "pool": pool}


def check_routing_conflicts(routing: dict[str, Any]) -> None:
    """Rules that can never match are a mistake, not a setting: a rule after one that matches
    everybody, and two rules of one name."""
    names: set[str] = set()
    catch_all: str | None = None
    for i, rule in enumerate(routing.get("rules") or []):
        name = rule.get("name", f"rule{i}") if isinstance(rule, dict) else f"rule{i}"
        if name in names:
            raise SiteError(f"'routing.rules[{i}].name': two rules are named {name!r}")
        names.add(name)
        if catch_all is not None:
            raise SiteError(f"'routing.rules[{i}]' ({name}) can never match: rule "
                            f"{catch_all!r} before it matches every visitor")
        if isinstance(rule, dict) and rule.get("match") is None:
            catch_all = name


def merge(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the fields of ``update`` checked and applied (a PUT may carry any
    subset). :class:`SiteError` names the first bad field."""
    unknown = set(update) - set(FIELDS)
    if unknown:
        raise SiteError(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(FIELDS)}")
    out = dict(current)
    for field, value in update.items():
        if field == "name":
            out[field] = _text(value, field, 1, 120)
        elif field == "color":
            if not isinstance(value, str) or not COLOR_RE.match(value):
                raise SiteError("'color' must be a hex colour like #0f766e or #fa0")
            out[field] = value.lower()
        elif field == "position":
            if value not in POSITIONS:
                raise SiteError(f"'position' must be one of {', '.join(POSITIONS)}")
            out[field] = value
        elif field in ("greeting", "offline_message"):
            out[field] = _text(value, field)
        elif field == "prechat_fields":
            out[field] = _prechat(value)
        elif field == "languages":
            if (not isinstance(value, list) or not value
                    or not all(v in LOCALES for v in value)):
                raise SiteError(f"'languages' must be a non-empty list of {', '.join(LOCALES)}")
            out[field] = list(dict.fromkeys(value))
        elif field == "business_hours":
            if value is not None:
                try:
                    parse_hours(value)
                except RoutingConfigError as exc:
                    raise SiteError(f"'{exc}'") from None
            out[field] = value
        elif field == "bot":
            out[field] = _bot(value)
        elif field == "routing":
            if value is not None:
                if not isinstance(value, dict) or "business_hours" in value:
                    raise SiteError("'routing' must be {rules: [...], vip_tags?: [...]} (the "
                                    "routing file's format; hours go in 'business_hours')")
                try:
                    parse_rules(value)
                except RoutingConfigError as exc:
                    raise SiteError(f"'routing.{exc}'") from None
                check_routing_conflicts(value)
            out[field] = value
    return out


def routing_for(settings: dict[str, Any], installation: RoutingConfig) -> RoutingConfig:
    """The rules and hours a site's new conversations are routed by: its own where it has
    them, the installation's otherwise."""
    routing, hours = settings.get("routing"), settings.get("business_hours")
    if routing:
        return parse_rules({**routing, **({"business_hours": hours} if hours else {})})
    if hours:
        return RoutingConfig(rules=installation.rules, vip_tags=installation.vip_tags,
                             hours=parse_hours(hours))
    return installation


def widget_config(site: str, settings: dict[str, Any], *, open_now: bool) -> dict[str, Any]:
    """What the public ``widget-config`` answers: branding and texts, never the rules."""
    return {"site": site, "name": settings["name"], "color": settings["color"],
            "position": settings["position"], "greeting": settings["greeting"],
            "offline_message": settings["offline_message"],
            "prechat_fields": settings["prechat_fields"], "languages": settings["languages"],
            "open": open_now}

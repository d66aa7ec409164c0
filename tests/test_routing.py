"""Routing rules and the agent choice (pure), as tables of named cases plus properties."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routernode.routing import choose_agent, fallback_due
from tidedesk.routing_rules import DEFAULT_RULES, RoutingConfigError, parse_rules

SEED = parse_rules(DEFAULT_RULES)


@pytest.mark.parametrize(("tags", "pool", "fallback"), [
    ((), "general", None),
    (("vip",), "experts", "general"),
    (("new",), "training", "general"),
    (("vip", "new"), "experts", "general"),  # first match wins
    (("returning",), "general", None),
], ids=["untagged", "vip", "new", "vip-and-new", "other-tag"])
def test_seed_rules_first_match_wins(tags: tuple[str, ...], pool: str,
                                     fallback: str | None) -> None:
    rule = SEED.rule_for(tags)
    assert (rule.pool, rule.fallback) == (pool, fallback)


def test_vip_tags_and_pools() -> None:
    assert SEED.is_vip(["vip"]) and not SEED.is_vip(["new"])
    assert set(SEED.pools) == {"experts", "general", "training"}


@pytest.mark.parametrize(("data", "field"), [
    ([], "routing file"),
    ({"rules": []}, "rules"),
    ({"rules": [{"match": {"tags": ["vip"]}}]}, "rules[0].pool"),
    ({"rules": [{"pool": "x", "colour": "red"}]}, "rules[0]: unknown key"),
    ({"rules": [{"pool": "x", "match": {"tag": "vip"}}]}, "rules[0].match"),
    ({"rules": [{"pool": "x", "fallback": "x"}]}, "rules[0].fallback"),
    ({"rules": [{"pool": "x", "max_wait_s": 5}]}, "rules[0].max_wait_s"),
    ({"rules": [{"pool": "x", "fallback": "y", "max_wait_s": -1}]}, "rules[0].max_wait_s"),
    ({"rules": [{"pool": "x"}], "vip_tags": "vip"}, "vip_tags"),
    ({"rules": [{"pool": "x"}], "extra": 1}, "unknown key"),
], ids=["not-a-mapping", "no-rules", "no-pool", "unknown-key", "bad-match", "self-fallback",
        "wait-without-fallback", "negative-wait", "vip-not-list", "unknown-top-key"])
def test_bad_rules_name_the_field(data: object, field: str) -> None:
    with pytest.raises(RoutingConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_rules(data)


@dataclass(frozen=True)
class A:
    agent_id: str
    status: str = "online"
    open_chats: int = 0
    max_chats: int = 3
    last_assigned_at: float = 0.0


@pytest.mark.parametrize(("agents", "expected"), [
    ([], None),
    ([A("1", status="away")], None),
    ([A("1", open_chats=3)], None),
    ([A("1", open_chats=2), A("2", open_chats=1)], "2"),
    ([A("1", open_chats=1, last_assigned_at=50), A("2", open_chats=1, last_assigned_at=10)],
     "2"),
    ([A("1", open_chats=0, status="offline"), A("2", open_chats=2)], "2"),
    ([A("1", open_chats=1, max_chats=1), A("2", open_chats=2, max_chats=5)], "2"),
    ([A("b"), A("a")], "a"),
], ids=["nobody", "away-only", "all-full", "fewest-chats", "idle-longest", "skip-offline",
        "limit-respected", "deterministic-tie"])
def test_choose_agent(agents: list[A], expected: str | None) -> None:
    chosen = choose_agent(agents)
    assert (chosen.agent_id if chosen else None) == expected


agent_st = st.builds(A, agent_id=st.text("abcdef", min_size=1, max_size=3),
                     status=st.sampled_from(["online", "away", "offline"]),
                     open_chats=st.integers(0, 6), max_chats=st.integers(1, 5),
                     last_assigned_at=st.floats(0, 1000))


@given(st.lists(agent_st, max_size=12))
def test_chosen_agent_is_online_under_limit_with_fewest_chats(agents: list[A]) -> None:
    chosen = choose_agent(agents)
    free = [a for a in agents if a.status == "online" and a.open_chats < a.max_chats]
    if not free:
        assert chosen is None
        return
    assert chosen in free
    assert chosen.open_chats == min(a.open_chats for a in free)


def test_fallback_after_max_wait() -> None:
    rule = SEED.rule_for(["vip"])
    assert fallback_due(rule, enqueued_at=100, now=159) is None
    assert fallback_due(rule, enqueued_at=100, now=160) == "general"
    assert fallback_due(SEED.rule_for([]), enqueued_at=0, now=10**6) is None


HOURS = {"rules": [{"pool": "general"}],
         "business_hours": {"timezone": "Asia/Shanghai", "days": ["mon", "tue", "wed", "thu",
                                                                  "fri"],
                            "open": "09:00", "close": "18:00"}}


def _at(iso: str) -> float:
    import datetime as dt
    from zoneinfo import ZoneInfo

    return dt.datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


@pytest.mark.parametrize(("when", "is_open"), [
    ("2026-11-30T09:00", True),   # Monday, opening minute
    ("2026-11-30T17:59", True),
    ("2026-11-30T18:00", False),  # closing minute is closed
    ("2026-11-30T08:59", False),
    ("2026-11-28T12:00", False),  # Saturday
], ids=["opens", "last-minute", "closes", "early", "weekend"])
def test_business_hours(when: str, is_open: bool) -> None:
    assert parse_rules(HOURS).is_open(_at(when)) is is_open


@pytest.mark.parametrize(("when", "is_open"), [
    ("2026-11-27T22:00", True),   # Friday evening shift
    ("2026-11-28T03:00", True),   # small hours of Saturday belong to Friday's shift
    ("2026-11-28T22:00", False),  # no Saturday shift
    ("2026-11-27T12:00", False),
], ids=["evening", "after-midnight", "no-shift", "midday"])
def test_business_hours_across_midnight(when: str, is_open: bool) -> None:
    night = {**HOURS, "business_hours": {**HOURS["business_hours"], "days": ["fri"],
                                         "open": "20:00", "close": "06:00"}}
    assert parse_rules(night).is_open(_at(when)) is is_open


def test_no_business_hours_means_always_open() -> None:
    assert SEED.is_open(0) and SEED.is_open(1.8e9)


@pytest.mark.parametrize(("hours", "field"), [
    ("9-5", "business_hours: must be a mapping"),
    ({"timezone": "Mars/Olympus", "open": "09:00", "close": "17:00"}, "timezone"),
    ({"open": "9am", "close": "17:00"}, "business_hours.open"),
    ({"open": "09:00", "close": "25:00"}, "business_hours.close"),
    ({"open": "09:00", "close": "09:00"}, "must differ"),
    ({"open": "09:00", "close": "17:00", "days": ["funday"]}, "business_hours.days"),
    ({"open": "09:00", "close": "17:00", "lunch": "12:00"}, "unknown key"),
], ids=["not-mapping", "timezone", "open", "close", "same", "days", "unknown"])
def test_bad_business_hours(hours: object, field: str) -> None:
    with pytest.raises(RoutingConfigError, match=field):
        parse_rules({"rules": [{"pool": "general"}], "business_hours": hours})

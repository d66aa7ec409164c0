"""Resume planning and seq re-seeding (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidedesk.resume import SEQ_RESEED_GAP, plan_resume, reseed_floor


def msgs(*seqs: int, private: tuple[int, ...] = ()) -> list[dict[str, object]]:
    return [{"seq": s, "private": s in private} for s in seqs]


def test_stream_covers_the_gap() -> None:
    plan = plan_resume(3, msgs(2, 3, 4, 5), include_private=False)
    assert not plan.from_database
    assert [m["seq"] for m in plan.messages] == [4, 5]


def test_stream_starting_right_after_is_enough() -> None:
    assert not plan_resume(3, msgs(4, 5), include_private=False).from_database


def test_stream_too_short_falls_back_to_the_database() -> None:
    assert plan_resume(3, msgs(10, 11), include_private=False).from_database
    assert plan_resume(0, [], include_private=False).from_database


def test_private_notes_only_for_agents() -> None:
    recent = msgs(1, 2, 3, private=(2,))
    assert [m["seq"] for m in plan_resume(0, recent, include_private=False).messages] == [1, 3]
    assert [m["seq"] for m in plan_resume(0, recent, include_private=True).messages] == [1, 2, 3]


def test_reseed() -> None:
    assert reseed_floor(0, conversation_is_new=True) == 0
    assert reseed_floor(41, conversation_is_new=False) == 41 + SEQ_RESEED_GAP


@given(st.lists(st.integers(1, 300), unique=True).map(sorted), st.integers(0, 300))
def test_stream_answer_is_exactly_what_is_missed(seqs: list[int], after: int) -> None:
    plan = plan_resume(after, msgs(*seqs), include_private=True)
    if plan.from_database:
        assert not seqs or seqs[0] > after + 1
    else:
        assert [m["seq"] for m in plan.messages] == [s for s in seqs if s > after]

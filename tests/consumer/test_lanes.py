"""LaneShare: strict priority with a share of turns handed down, for any number of lanes."""

from __future__ import annotations

from collections import Counter

import pytest

from consumer.lanes import LaneShare


def turns(share: LaneShare, waiting: set[int], count: int) -> list[int]:
    return [share.take_turn(waiting) for _ in range(count)]


def test_without_a_share_the_most_urgent_lane_always_goes() -> None:
    share = LaneShare(0.0)
    assert turns(share, {2, 0, 1}, 20) == [0] * 20
    assert share.due({1, 2}) == 1


def test_one_lane_alone_takes_every_turn_and_earns_nothing() -> None:
    share = LaneShare(0.5)
    assert turns(share, {1}, 5) == [1] * 5
    assert turns(share, {0, 1}, 2) == [0, 1]  # nothing was banked while lane 1 was alone


def test_a_quarter_share_hands_every_fourth_turn_down() -> None:
    assert turns(LaneShare(0.25), {0, 1}, 8) == [0, 0, 0, 1, 0, 0, 0, 1]


def test_a_tenth_share_is_exactly_one_turn_in_ten() -> None:
    assert turns(LaneShare(0.1), {0, 1}, 30).count(1) == 3


def test_the_share_applies_again_below_the_top_lane() -> None:
    counts = Counter(turns(LaneShare(0.25), {0, 1, 2}, 64))
    assert counts == {0: 48, 1: 12, 2: 4}  # 3/4, then 3/4 of the remaining 1/4, then the rest


def test_an_empty_top_lane_does_not_starve_the_lowest() -> None:
    # The bug this policy replaces: credit was earned only by lane 0, so with lane 0 idle, lane 2
    # waited for lane 1 to drain completely.
    assert turns(LaneShare(0.25), {1, 2}, 8) == [1, 1, 1, 2, 1, 1, 1, 2]


def test_due_peeks_without_taking_the_turn() -> None:
    share = LaneShare(0.5)
    assert share.due({0, 1}) == 0
    assert share.take_turn({0, 1}) == 0
    assert share.due({0, 1}) == 1
    assert share.due({0, 1}) == 1
    assert share.take_turn({0, 1}) == 1
    assert share.due({0, 1}) == 0
    assert share.due([]) is None


def test_a_full_share_gives_every_turn_to_the_lower_lanes() -> None:
    assert turns(LaneShare(1.0), {0, 1}, 4) == [1, 1, 1, 1]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        LaneShare(bad)


def test_taking_a_turn_with_no_work_is_an_error() -> None:
    with pytest.raises(ValueError, match="no lane has work"):
        LaneShare(0.5).take_turn([])

"""PartitionOffsets: commit only up to the lowest record in flight, never past an abandoned one."""

from __future__ import annotations

from consumer.commits import PartitionOffsets


def commit(offsets: PartitionOffsets) -> int | None:
    """What the worker does: ask for the committable offset and, if any, record it as committed."""
    offset = offsets.committable()
    if offset is not None:
        offsets.committed = offset
    return offset


def test_nothing_to_commit_at_first() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None
    offsets.start(5)
    assert offsets.committable() == 5  # next to consume is 5 itself: harmless, nothing skipped


def test_in_order_finish_commits_the_next_offset() -> None:
    offsets = PartitionOffsets()
    offsets.start(5)
    offsets.finish(5)
    assert commit(offsets) == 6


def test_out_of_order_finishes_commit_only_up_to_the_lowest_in_flight() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 6, 7):
        offsets.start(offset)
    offsets.finish(7)
    assert commit(offsets) == 5  # 5 and 6 still run: 7 must not be committed past them
    offsets.finish(6)
    assert commit(offsets) is None  # 5 still runs; 5 is already committed
    offsets.finish(5)
    assert commit(offsets) == 8  # all done: resume after the highest finished


def test_the_lowest_in_flight_gates_even_when_the_highest_is_done() -> None:
    offsets = PartitionOffsets()
    offsets.start(10)
    offsets.start(11)
    offsets.finish(11)
    offsets.start(12)
    assert offsets.committable() == 10
    offsets.finish(10)
    assert offsets.committable() == 12


def test_nothing_is_committed_twice() -> None:
    offsets = PartitionOffsets()
    offsets.start(1)
    offsets.finish(1)
    assert commit(offsets) == 2
    assert offsets.committable() is None
    assert commit(offsets) is None
    offsets.start(2)
    assert offsets.committable() is None  # 2 is already the committed position
    offsets.finish(2)
    assert commit(offsets) == 3
    assert offsets.committable() is None


def test_committed_never_moves_backwards() -> None:
    offsets = PartitionOffsets(committed=20)
    offsets.start(15)  # e.g. a stale redelivery below what we already committed
    assert offsets.committable() is None
    offsets.finish(15)
    assert offsets.committable() is None


def test_abandon_blocks_commits_at_that_offset() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 6, 7):
        offsets.start(offset)
    offsets.finish(5)
    offsets.abandon(6)
    offsets.finish(7)
    assert offsets.in_flight == set()
    assert commit(offsets) == 6  # 6 will be redelivered (and 7 with it)
    assert offsets.committable() is None


def test_abandon_before_anything_finished_commits_nothing_past_it() -> None:
    offsets = PartitionOffsets()
    offsets.start(5)
    offsets.start(6)
    offsets.abandon(5)
    offsets.finish(6)
    assert offsets.committable() == 5


def test_abandon_of_the_only_record_commits_nothing() -> None:
    offsets = PartitionOffsets()
    offsets.start(5)
    offsets.abandon(5)
    assert offsets.committable() is None


def test_the_lowest_abandoned_offset_wins() -> None:
    offsets = PartitionOffsets()
    for offset in (3, 4, 5, 6):
        offsets.start(offset)
    offsets.abandon(5)
    offsets.abandon(4)
    offsets.abandon(6)
    offsets.finish(3)
    assert offsets.abandoned_at == 4
    assert commit(offsets) == 4


def test_abandon_keeps_blocking_later_finishes() -> None:
    offsets = PartitionOffsets()
    offsets.start(1)
    offsets.abandon(1)
    offsets.start(2)
    offsets.finish(2)
    offsets.start(3)
    offsets.finish(3)
    assert commit(offsets) == 1
    assert offsets.committable() is None


def test_finish_tracks_the_highest_done() -> None:
    offsets = PartitionOffsets()
    for offset in (1, 2, 3):
        offsets.start(offset)
    offsets.finish(3)
    offsets.finish(1)
    assert offsets.highest_done == 3
    assert offsets.in_flight == {2}


def test_finishing_an_unknown_offset_is_harmless() -> None:
    offsets = PartitionOffsets()
    offsets.finish(9)
    offsets.abandon(12)
    assert offsets.in_flight == set()
    assert offsets.committable() == 10


def test_with_nothing_in_flight_the_position_is_committable_past_records_never_seen() -> None:
    offsets = PartitionOffsets()
    offsets.start(3)
    offsets.finish(3)
    assert offsets.committable(position=5) == 5  # 4 was a transaction marker
    assert offsets.committable(position=None) == 4


def test_the_position_alone_moves_a_partition_that_held_only_markers_or_aborted_records() -> None:
    assert PartitionOffsets().committable(position=7) == 7
    assert PartitionOffsets(committed=7).committable(position=7) is None


def test_the_position_is_ignored_while_in_flight_or_after_an_abandon() -> None:
    offsets = PartitionOffsets()
    offsets.start(3)
    assert offsets.committable(position=9) == 3
    offsets.abandon(3)
    assert offsets.committable(position=9) is None

"""CommitTracker: commit what is safe per assigned partition; resume after what finished here."""

from __future__ import annotations

from aiokafka import TopicPartition

from consumer.commits import CommitTracker
from tests.consumer.fakes import FakeConsumer

P0 = TopicPartition("requests", 0)
P1 = TopicPartition("requests", 1)


async def test_commits_each_partition_up_to_its_lowest_record_in_flight() -> None:
    consumer = FakeConsumer(P0, P1)
    commits = CommitTracker()
    for offset in (0, 1, 2):
        commits.start(P0, offset)
    commits.start(P1, 9)
    commits.finish(P0, 0)
    commits.finish(P0, 2)
    commits.finish(P1, 9)
    await commits.commit_ready(consumer)
    assert consumer.commits == [{P0: 1, P1: 10}]
    await commits.commit_ready(consumer)
    assert len(consumer.commits) == 1  # nothing new: no second commit


async def test_a_partition_that_moved_away_is_not_committed() -> None:
    consumer = FakeConsumer(P1)
    commits = CommitTracker()
    commits.start(P0, 4)
    commits.finish(P0, 4)
    await commits.commit_ready(consumer)
    assert all(P0 not in committed for committed in consumer.commits)


async def test_a_partition_that_comes_back_resumes_after_what_finished_here() -> None:
    consumer = FakeConsumer(P0)
    consumer.group_committed = {P0: 3}
    commits = CommitTracker()
    commits.start(P0, 4)
    commits.finish(P0, 4)
    await commits.on_assigned(consumer, {P0})
    assert consumer.seeks == [(P0, 5)]
    await commits.commit_ready(consumer)
    assert consumer.group_committed[P0] == 5


async def test_a_partition_that_comes_back_never_goes_below_the_groups_committed_offset() -> None:
    """Issue 11: p1 went 13 -> 8 when a member got back a partition it had owned before."""
    consumer = FakeConsumer(P0)
    commits = CommitTracker()
    for offset in range(5, 8):
        commits.start(P0, offset)
        commits.finish(P0, offset)
    consumer.group_committed = {P0: 13}  # another member finished 8..12 while P0 was away
    await commits.on_assigned(consumer, {P0})
    assert consumer.seeks == []  # resumes at 13, not at 8
    await commits.commit_ready(consumer)
    assert consumer.commits == []
    commits.start(P0, 13)
    commits.finish(P0, 13)
    consumer.positions[P0] = consumer.highwaters[P0] = 14
    await commits.commit_ready(consumer)
    assert consumer.commits == [{P0: 14}]


async def test_a_record_still_running_here_below_the_floor_is_never_committed_back() -> None:
    consumer = FakeConsumer(P0)
    commits = CommitTracker()
    commits.start(P0, 8)
    consumer.group_committed = {P0: 13}
    await commits.on_assigned(consumer, {P0})
    await commits.commit_ready(consumer)
    commits.finish(P0, 8)
    await commits.commit_ready(consumer)
    assert consumer.commits == []
    assert consumer.group_committed[P0] == 13


async def test_with_nothing_in_flight_the_position_past_a_transaction_marker_is_committed() -> None:
    consumer = FakeConsumer(P0)
    commits = CommitTracker()
    commits.start(P0, 4)
    commits.finish(P0, 4)
    consumer.positions[P0] = 6  # offset 5 is a transaction marker: fetched past, never returned
    consumer.highwaters[P0] = 6
    await commits.commit_ready(consumer)
    assert consumer.commits == [{P0: 6}]


async def test_the_position_does_not_count_while_a_record_is_in_flight() -> None:
    consumer = FakeConsumer(P0)
    commits = CommitTracker()
    commits.start(P0, 4)
    consumer.positions[P0] = consumer.highwaters[P0] = 9
    await commits.commit_ready(consumer)
    assert consumer.commits == [{P0: 4}]


async def test_a_partition_with_an_abandoned_record_is_not_sought_past_it() -> None:
    consumer = FakeConsumer(P0)
    commits = CommitTracker()
    commits.start(P0, 4)
    commits.start(P0, 5)
    commits.finish(P0, 5)
    commits.abandon(P0, 4)
    await commits.on_assigned(consumer, {P0})
    assert consumer.seeks == []


async def test_the_position_is_not_asked_of_partitions_never_fetched_or_already_committed() -> None:
    consumer = FakeConsumer(P0, P1)
    consumer.group_committed = {P0: 5}
    consumer.positions = {P0: 5, P1: 3}
    consumer.highwaters = {P0: 5}  # P1: not fetched yet (its position may be being reset)
    commits = CommitTracker()
    await commits.on_assigned(consumer, {P0, P1})
    await commits.commit_ready(consumer)
    assert consumer.commits == []

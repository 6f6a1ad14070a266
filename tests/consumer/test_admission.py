"""Admission: at most `max_in_flight` records start, lanes take turns, the waiting ones are sought back."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from consumer.admission import Admission
from consumer.commits import CommitTracker, Flight
from tests.consumer.fakes import FakeConsumer

URGENT = TopicPartition("urgent", 0)
BULK = TopicPartition("bulk", 0)


def record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"{}",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=2,
        headers=[],
    )


class Starts:
    """Does what the worker does with admitted records: registers each in the in-flight registry (with a
    dummy task) and records what was started."""

    def __init__(self, admission: Admission, commits: CommitTracker) -> None:
        self.admission = admission
        self.commits = commits
        self.started: list[tuple[str, int, int]] = []

    def admit(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for rec, gpu_lane in self.admission.admit(tp, records):
            self.started.append((tp.topic, rec.offset, gpu_lane))
            task = asyncio.get_running_loop().create_future()
            self.commits.start(
                tp, rec.offset, Flight(rec, task, f"r{rec.offset}", self.admission.lane_of(tp))
            )


async def test_admits_up_to_max_in_flight_and_seeks_back_to_the_first_that_waits() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=2, low_lane_share=0.0
    )
    starts = Starts(admission, commits)
    starts.admit(BULK, [record(BULK, o) for o in (3, 4, 5, 6)])
    assert [offset for _, offset, _ in starts.started] == [3, 4]
    assert consumer.seeks == [(BULK, 5)]
    assert admission.free == 0


async def test_a_refetched_record_still_in_flight_is_not_started_twice() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=4, low_lane_share=0.0
    )
    starts = Starts(admission, commits)
    starts.admit(BULK, [record(BULK, 3)])
    starts.admit(BULK, [record(BULK, 3), record(BULK, 4)])
    assert [offset for _, offset, _ in starts.started] == [3, 4]


async def test_release_frees_the_slot() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=1, low_lane_share=0.0
    )
    starts = Starts(admission, commits)
    starts.admit(BULK, [record(BULK, 0)])
    assert admission.free == 0
    commits.finish(BULK, 0)
    assert admission.free == 1


async def test_a_lower_lane_record_waits_while_the_urgent_lane_has_work() -> None:
    consumer = FakeConsumer(URGENT, BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["urgent", "bulk"], max_in_flight=4, low_lane_share=0.0
    )
    starts = Starts(admission, commits)
    starts.admit(URGENT, [record(URGENT, 0)])
    starts.admit(BULK, [record(BULK, 7)])  # fetched despite a pause: read again later
    assert starts.started == [("urgent", 0, 0)]
    assert consumer.seeks == [(BULK, 7)]
    admission.apply_pauses(full=False)
    assert consumer.paused() == {BULK}


async def test_full_pauses_everything_and_a_free_slot_resumes() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=1, low_lane_share=0.0
    )
    admission.apply_pauses(full=True)
    assert consumer.paused() == {BULK}
    admission.apply_pauses(full=False)
    assert consumer.paused() == set()


async def test_pauses_are_restored_after_a_rebalance_forgets_them() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=1, low_lane_share=0.0
    )
    starts = Starts(admission, commits)
    starts.admit(BULK, [record(BULK, 0)])
    admission.apply_pauses(full=admission.free <= 0)
    consumer.paused_tps.clear()  # what aiokafka does on every rebalance
    admission.on_assigned({BULK}, draining=False)
    assert consumer.paused() == {BULK}


async def test_draining_keeps_everything_paused_after_a_rebalance() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=4, low_lane_share=0.0
    )
    admission.on_assigned({BULK}, draining=True)
    assert consumer.paused() == {BULK}


async def test_learn_positions_counts_the_unread_backlog() -> None:
    consumer = FakeConsumer(URGENT, BULK)
    consumer.positions = {URGENT: 5, BULK: 0}
    consumer.highwaters = {URGENT: 5, BULK: 10}  # nothing unread on the urgent lane
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["urgent", "bulk"], max_in_flight=4, low_lane_share=0.0
    )
    await admission.learn_positions()
    admission.apply_pauses(full=False)
    assert consumer.paused() == {URGENT}  # the bulk lane is the only one with work: its turn


async def test_records_in_flight_too_long_are_listed_oldest_first() -> None:
    consumer = FakeConsumer(BULK)
    commits = CommitTracker()
    admission = Admission(
        consumer, commits.flights, request_topics=["bulk"], max_in_flight=4, low_lane_share=0.0
    )
    starts = Starts(admission, commits)
    starts.admit(BULK, [record(BULK, o) for o in (0, 1, 2)])
    commits.flights[(BULK, 0)].admitted_at -= 100
    commits.flights[(BULK, 1)].admitted_at -= 200
    assert [f.record.offset for f in admission.older_than(50)] == [1, 0]
    assert 199 < admission.oldest_age() < 210
    commits.finish(BULK, 1)
    commits.finish(BULK, 0)
    assert admission.older_than(50) == []

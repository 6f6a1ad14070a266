"""Admission: at most `max_in_flight` records start, lanes take turns, the waiting ones are sought back."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from consumer.admission import Admission, Flight
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
    """A starter that records what was started and gives each record a finished dummy task."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.started: list[tuple[str, int, int]] = []

    def __call__(self, tp: TopicPartition, rec: ConsumerRecord[bytes, bytes], gpu_lane: int) -> Flight:
        self.started.append((tp.topic, rec.offset, gpu_lane))
        task = asyncio.get_running_loop().create_future()
        return Flight(rec, task, f"r{rec.offset}", self.admission.lane_of(tp))  # type: ignore[arg-type]


async def test_admits_up_to_max_in_flight_and_seeks_back_to_the_first_that_waits() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=2, low_lane_share=0.0)
    starts = Starts(admission)
    admission.admit(BULK, [record(BULK, o) for o in (3, 4, 5, 6)], starts)
    assert [offset for _, offset, _ in starts.started] == [3, 4]
    assert consumer.seeks == [(BULK, 5)]
    assert admission.free == 0


async def test_a_refetched_record_still_in_flight_is_not_started_twice() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=4, low_lane_share=0.0)
    starts = Starts(admission)
    admission.admit(BULK, [record(BULK, 3)], starts)
    admission.admit(BULK, [record(BULK, 3), record(BULK, 4)], starts)
    assert [offset for _, offset, _ in starts.started] == [3, 4]


async def test_release_frees_the_slot() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=1, low_lane_share=0.0)
    starts = Starts(admission)
    admission.admit(BULK, [record(BULK, 0)], starts)
    assert admission.free == 0
    admission.release(BULK, 0)
    assert admission.free == 1


async def test_a_lower_lane_record_waits_while_the_urgent_lane_has_work() -> None:
    consumer = FakeConsumer(URGENT, BULK)
    admission = Admission(consumer, request_topics=["urgent", "bulk"], max_in_flight=4, low_lane_share=0.0)
    starts = Starts(admission)
    admission.admit(URGENT, [record(URGENT, 0)], starts)
    admission.admit(BULK, [record(BULK, 7)], starts)  # fetched despite a pause: read again later
    assert starts.started == [("urgent", 0, 0)]
    assert consumer.seeks == [(BULK, 7)]
    admission.apply_pauses(full=False)
    assert consumer.paused() == {BULK}


async def test_full_pauses_everything_and_a_free_slot_resumes() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=1, low_lane_share=0.0)
    admission.apply_pauses(full=True)
    assert consumer.paused() == {BULK}
    admission.apply_pauses(full=False)
    assert consumer.paused() == set()


async def test_pauses_are_restored_after_a_rebalance_forgets_them() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=1, low_lane_share=0.0)
    starts = Starts(admission)
    admission.admit(BULK, [record(BULK, 0)], starts)
    admission.apply_pauses(full=admission.free <= 0)
    consumer.paused_tps.clear()  # what aiokafka does on every rebalance
    admission.on_assigned({BULK}, draining=False)
    assert consumer.paused() == {BULK}


async def test_draining_keeps_everything_paused_after_a_rebalance() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=4, low_lane_share=0.0)
    admission.on_assigned({BULK}, draining=True)
    assert consumer.paused() == {BULK}


async def test_learn_positions_counts_the_unread_backlog() -> None:
    consumer = FakeConsumer(URGENT, BULK)
    consumer.positions = {URGENT: 5, BULK: 0}
    consumer.highwaters = {URGENT: 5, BULK: 10}  # nothing unread on the urgent lane
    admission = Admission(consumer, request_topics=["urgent", "bulk"], max_in_flight=4, low_lane_share=0.0)
    await admission.learn_positions()
    admission.apply_pauses(full=False)
    assert consumer.paused() == {URGENT}  # the bulk lane is the only one with work: its turn


async def test_records_in_flight_too_long_are_listed_oldest_first() -> None:
    consumer = FakeConsumer(BULK)
    admission = Admission(consumer, request_topics=["bulk"], max_in_flight=4, low_lane_share=0.0)
    starts = Starts(admission)
    admission.admit(BULK, [record(BULK, o) for o in (0, 1, 2)], starts)
    admission.flights[(BULK, 0)].admitted_at -= 100
    admission.flights[(BULK, 1)].admitted_at -= 200
    assert [f.record.offset for f in admission.older_than(50)] == [1, 0]
    assert 199 < admission.oldest_age() < 210
    admission.release(BULK, 1)
    admission.release(BULK, 0)
    assert admission.older_than(50) == []

"""LagReporter: per-partition lag of what this worker owns, summable across workers (no broker)."""

from __future__ import annotations

from aiokafka import TopicPartition

from consumer.http.metrics import WorkerMetrics
from consumer.kafka.lag import LagReporter
from tests.consumer.fakes import FakeConsumer

P0 = TopicPartition("requests", 0)
P1 = TopicPartition("requests", 1)


def exported(metrics: WorkerMetrics) -> dict[str, float]:
    return {
        sample.labels["partition"]: sample.value
        for family in metrics.consumer_lag.collect()
        for sample in family.samples
    }


async def test_lag_is_end_minus_committed() -> None:
    consumer = FakeConsumer(P0)
    consumer.ends = {P0: 12}
    consumer.group_committed = {P0: 9}
    metrics = WorkerMetrics()
    await LagReporter(metrics).observe(consumer)
    assert exported(metrics) == {"0": 3}


async def test_before_the_first_commit_lag_counts_from_where_the_group_starts() -> None:
    consumer = FakeConsumer(P0)
    consumer.ends = {P0: 120}
    consumer.beginnings = {P0: 100}  # retention deleted 0..99: the group starts reading at 100
    metrics = WorkerMetrics()
    await LagReporter(metrics).observe(consumer)
    assert exported(metrics) == {"0": 20}  # not 120
    latest = WorkerMetrics()
    await LagReporter(latest, auto_offset_reset="latest").observe(consumer)
    assert exported(latest) == {"0": 0}  # a "latest" group starts at the end


async def test_a_revoked_partition_leaves_no_series_behind() -> None:
    consumer = FakeConsumer(P0, P1)
    consumer.ends = {P0: 5, P1: 7}
    metrics = WorkerMetrics()
    lag = LagReporter(metrics)
    await lag.observe(consumer)
    assert exported(metrics) == {"0": 5, "1": 7}
    lag.forget({P1})  # on_partitions_revoked
    assert exported(metrics) == {"0": 5}
    consumer.assigned = {P0}
    await lag.observe(consumer)
    assert exported(metrics) == {"0": 5}


async def test_a_partition_no_longer_assigned_is_dropped_on_the_next_observation() -> None:
    consumer = FakeConsumer(P0, P1)
    consumer.ends = {P0: 5, P1: 7}
    metrics = WorkerMetrics()
    lag = LagReporter(metrics)
    await lag.observe(consumer)
    consumer.assigned = {P0}  # moved away without a revoke callback reaching us
    await lag.observe(consumer)
    assert exported(metrics) == {"0": 5}
    consumer.assigned = set()
    await lag.observe(consumer)
    assert exported(metrics) == {}

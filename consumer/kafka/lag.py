"""`klein_edit_consumer_lag`: how many records of this worker's partitions the group has not committed.

Each worker exports the lag of the partitions it owns now, so the sum over all workers is the group's
lag, as KEDA computes it:
- a partition's series is removed when the partition is revoked (and any series of a partition no
  longer assigned is dropped on the next observation), so a rebalance never leaves a stale copy on
  the old owner that the new owner exports too;
- before the group's first commit on a partition, lag counts from where the group starts reading
  (`auto_offset_reset`: the log start offset for "earliest", nothing for "latest"), not from
  offset 0 of a topic whose head was already deleted by retention.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Literal, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumer.http.metrics import WorkerMetrics


class LagClient(Protocol):
    """The consumer calls lag needs (`aiokafka.AIOKafkaConsumer` is the real one)."""

    def assignment(self) -> set[TopicPartition]: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...
    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...


class LagReporter:
    def __init__(
        self, metrics: WorkerMetrics, *, auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    ) -> None:
        self._gauge = metrics.consumer_lag
        self._reset = auto_offset_reset
        self._exported: set[TopicPartition] = set()

    async def observe(self, consumer: LagClient, *, timeout_s: float = 2.0) -> None:
        """Set the lag of every assigned partition; a broker that does not answer skips this round."""
        assigned = sorted(consumer.assignment())
        self.forget(self._exported - set(assigned))
        if not assigned:
            return
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), timeout_s)
            starts = (
                await asyncio.wait_for(consumer.beginning_offsets(assigned), timeout_s)
                if self._reset == "earliest"
                else ends
            )
            committed = {tp: await asyncio.wait_for(consumer.committed(tp), timeout_s) for tp in assigned}
        except (KafkaError, TimeoutError):
            return
        still = consumer.assignment()  # a rebalance may have run while we waited
        for tp in assigned:
            if tp not in still:
                continue
            done = committed[tp]
            start = done if done is not None else starts.get(tp, 0)
            self._gauge.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(ends.get(tp, 0) - start, 0)
            )
            self._exported.add(tp)
        self.forget(self._exported - still)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the series of partitions this worker no longer owns."""
        for tp in list(partitions):
            if tp in self._exported:
                self._exported.discard(tp)
                with contextlib.suppress(KeyError):
                    self._gauge.remove(tp.topic, str(tp.partition))

"""Commit tracking: what this worker may commit per partition, and where it resumes after a rebalance.

`PartitionOffsets` keeps the arithmetic of one partition (records finishing out of order); this module
owns one of them per partition, commits what is safe, and restores positions when partitions come
back. A partition that moved to another member is never committed here: its new owner redoes the
record, and the idempotent output makes that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumer.metrics import WorkerMetrics
from consumer.offsets import PartitionOffsets

log = structlog.get_logger("klein_edit.worker")


class CommitClient(Protocol):
    """The consumer calls commit tracking needs (`aiokafka.AIOKafkaConsumer` is the real one)."""

    def assignment(self) -> set[TopicPartition]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...


class CommitTracker:
    def __init__(self) -> None:
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._lock = asyncio.Lock()

    def partition(self, tp: TopicPartition) -> PartitionOffsets:
        return self._offsets.setdefault(tp, PartitionOffsets())

    def start(self, tp: TopicPartition, offset: int) -> None:
        """A record was admitted: nothing at or after it is committed until it finishes."""
        self.partition(tp).start(offset)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        """The record's result is acknowledged: it may be committed past."""
        self.partition(tp).finish(offset)

    def abandon(self, tp: TopicPartition, offset: int) -> None:
        """The record will not finish here: it and everything after it stay uncommitted."""
        self.partition(tp).abandon(offset)

    async def commit_ready(self, consumer: CommitClient | None) -> None:
        """Commit every assigned partition's committable offset; a failed commit is retried next time."""
        if consumer is None:
            return
        async with self._lock:
            assigned = consumer.assignment()
            to_commit = {}
            for tp, offsets in self._offsets.items():
                offset = offsets.committable()
                # A partition that moved to another member is not ours to commit: its owner redoes the record.
                if offset is not None and tp in assigned:
                    to_commit[tp] = offset
            if not to_commit:
                return
            try:
                await consumer.commit(to_commit)
            except KafkaError as exc:
                log.warning("commit.failed", error=repr(exc), partitions=len(to_commit))
                return
            for tp, offset in to_commit.items():
                self._offsets[tp].committed = offset

    def on_assigned(self, consumer: CommitClient, assigned: Iterable[TopicPartition]) -> None:
        """Partitions (re)joined this member: resume after what already finished here."""
        for tp in assigned:
            offsets = self._offsets.get(tp)
            if offsets is None:
                continue
            # The partition came back: don't redo what already finished here but was not yet committed.
            if not offsets.in_flight and offsets.highest_done is not None and offsets.abandoned_at is None:
                consumer.seek(tp, offsets.highest_done + 1)
            offsets.committed = None


async def observe_lag(consumer: CommitClient, metrics: WorkerMetrics) -> None:
    """Set `klein_edit_consumer_lag` (end offset minus committed) for every assigned partition."""
    assigned = list(consumer.assignment())
    if not assigned:
        return
    with contextlib.suppress(KafkaError, asyncio.TimeoutError):
        ends = await asyncio.wait_for(consumer.end_offsets(assigned), timeout=2.0)
        for tp in assigned:
            committed = await asyncio.wait_for(consumer.committed(tp), timeout=2.0)
            lag = ends.get(tp, 0) - (committed or 0)
            metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(lag, 0))

"""Commit tracking and the records in flight: what this worker may commit per partition, which records
run now, and where each partition resumes after a rebalance.

`CommitTracker` is the one registry of records in flight (`Flight`): admission counts its slots from it,
the drain waits on it, and the commit arithmetic reads it.

`PartitionOffsets` keeps the arithmetic of one partition (records finishing out of order); this module
owns one of them per partition, commits what is safe, and restores positions when partitions come
back, never below the group's committed offset. With nothing in flight it commits the consumer's
position, so transaction markers and other offsets that never reach the worker are committed too.
A partition that moved to another member is never committed here: its new owner redoes the record,
and the idempotent output makes that harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

log = structlog.get_logger("klein_edit.worker")
COMMIT_TIMEOUT_S = 10.0  # one commit's longest wait; a failed or timed-out commit is retried next time


@dataclass
class Flight:
    """One admitted record, until its task ends. `lane` is its topic's priority lane (0 most urgent)."""

    record: ConsumerRecord[bytes, bytes]
    task: asyncio.Future[None]
    request_id: str
    lane: int
    admitted_at: float = field(default_factory=time.monotonic)


@dataclass
class PartitionOffsets:
    in_flight: set[int] = field(default_factory=set)
    highest_done: int | None = None
    committed: int | None = None  # the next offset to consume, as last committed by us
    abandoned_at: int | None = None  # lowest record given up on (shutdown past the grace period)

    def start(self, offset: int) -> None:
        self.in_flight.add(offset)

    def finish(self, offset: int) -> None:
        self.in_flight.discard(offset)
        if self.highest_done is None or offset > self.highest_done:
            self.highest_done = offset

    def abandon(self, offset: int) -> None:
        """The record will not finish here: it and everything after it stay uncommitted."""
        self.in_flight.discard(offset)
        self.abandoned_at = offset if self.abandoned_at is None else min(self.abandoned_at, offset)

    def committable(self, position: int | None = None) -> int | None:
        """The offset to commit now, or None when nothing new is safe to commit.

        `position` is the consumer's position (the next offset it will return), read after every
        record it returned was admitted or sought back; it counts only while nothing is in flight and
        nothing was abandoned.
        """
        candidates = []
        if self.in_flight:
            candidates.append(min(self.in_flight))
        elif self.highest_done is not None:
            candidates.append(self.highest_done + 1)
        if position is not None and not self.in_flight and self.abandoned_at is None:
            candidates = [max([position, *candidates])]
        if not candidates:
            return None
        if self.abandoned_at is not None:
            candidates.append(self.abandoned_at)
        candidate = min(candidates)
        if self.committed is not None and candidate <= self.committed:
            return None
        return candidate


class CommitClient(Protocol):
    """The consumer calls commit tracking needs (`aiokafka.AIOKafkaConsumer` is the real one)."""

    def assignment(self) -> set[TopicPartition]: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...


class CommitTracker:
    def __init__(self) -> None:
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._flights: dict[tuple[TopicPartition, int], Flight] = {}
        self._lock = asyncio.Lock()

    @property
    def flights(self) -> Mapping[tuple[TopicPartition, int], Flight]:
        """The records in flight, by (partition, offset); read-only."""
        return self._flights

    def partition(self, tp: TopicPartition) -> PartitionOffsets:
        return self._offsets.setdefault(tp, PartitionOffsets())

    def start(self, tp: TopicPartition, offset: int, flight: Flight | None = None) -> None:
        """A record was admitted (its `flight` when it runs as a task): nothing at or after it is
        committed until it finishes."""
        self.partition(tp).start(offset)
        if flight is not None:
            self._flights[(tp, offset)] = flight

    def finish(self, tp: TopicPartition, offset: int) -> None:
        """The record's result is acknowledged: it may be committed past, and its slot is free."""
        self.partition(tp).finish(offset)
        self._flights.pop((tp, offset), None)

    def abandon(self, tp: TopicPartition, offset: int) -> None:
        """The record will not finish here: it and everything after it stay uncommitted; its slot is free."""
        self.partition(tp).abandon(offset)
        self._flights.pop((tp, offset), None)

    async def commit_ready(self, consumer: CommitClient | None, *, by_position: bool = True) -> None:
        """Commit every assigned partition's committable offset; a failed commit is retried next time.

        `by_position=False` commits only past records answered here, never the consumer's position: for
        an exit by exception, when records fetched but not admitted lie below the position.
        """
        if consumer is None:
            return
        async with self._lock:
            assigned = consumer.assignment()
            to_commit = {}
            for tp in assigned:
                # A partition that moved to another member is not ours to commit: its owner redoes the record.
                offsets = self.partition(tp)
                position = await self._position(consumer, tp, offsets) if by_position else None
                offset = offsets.committable(position)
                if offset is not None:
                    to_commit[tp] = offset
            if not to_commit:
                return
            try:
                # Bounded: aiokafka retries a retriable error (a partition whose topic was just deleted:
                # UnknownTopicOrPartition) forever, which would hold a rebalance open for good.
                await asyncio.wait_for(consumer.commit(to_commit), timeout=COMMIT_TIMEOUT_S)
            except (KafkaError, TimeoutError) as exc:
                log.warning("commit.failed", error=repr(exc), partitions=len(to_commit))
                return
            for tp, offset in to_commit.items():
                self._offsets[tp].committed = offset

    @staticmethod
    async def _position(consumer: CommitClient, tp: TopicPartition, offsets: PartitionOffsets) -> int | None:
        """The consumer's position, when it may count (nothing in flight) and may move the commit.

        Asked only of partitions fetched at least once (a highwater is known, so the position is
        valid and answered without I/O) whose commit is behind the highwater: idle partitions cost
        nothing, and the consume loop never waits on a position being reset.
        """
        if offsets.in_flight or offsets.abandoned_at is not None:
            return None
        highwater = consumer.highwater(tp)
        if highwater is None or (offsets.committed is not None and offsets.committed >= highwater):
            return None
        try:
            return await asyncio.wait_for(consumer.position(tp), timeout=0.5)
        except (TimeoutError, KafkaError):
            return None  # being reset or reassigned: the next loop knows

    async def on_assigned(self, consumer: CommitClient, assigned: Iterable[TopicPartition]) -> None:
        """Partitions (re)joined this member: never below the group's committed offset.

        The group's committed offset (`consumer.committed`) becomes the floor: nothing at or below it
        is committed again, so committed offsets never move backwards, even when another member
        committed past what this member finished while the partition was away. A partition that
        comes back resumes after what already finished here only when that is past the floor.
        """
        for tp in assigned:
            try:
                group: int | None = await asyncio.wait_for(consumer.committed(tp), timeout=5.0)
            except (TimeoutError, KafkaError) as exc:
                log.warning("commit.floor_unknown", partition=f"{tp.topic}-{tp.partition}", error=repr(exc))
                group = None
                known = False
            else:
                known = True
            offsets = self.partition(tp)
            resume = offsets.highest_done + 1 if offsets.highest_done is not None else None
            if (
                known
                and resume is not None
                and not offsets.in_flight
                and offsets.abandoned_at is None
                and (group is None or resume > group)
            ):
                # Finished here but not yet committed: don't redo it.
                consumer.seek(tp, resume)
            offsets.committed = group

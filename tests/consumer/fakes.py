"""A fake of the consumer calls that admission and commit tracking make, for unit tests."""

from __future__ import annotations

from aiokafka import TopicPartition


class FakeConsumer:
    """Assignment, positions, pauses and commits in memory; `seeks` and `commits` record the calls."""

    def __init__(self, *assigned: TopicPartition) -> None:
        self.assigned = set(assigned)
        self.paused_tps: set[TopicPartition] = set()
        self.highwaters: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.group_committed: dict[TopicPartition, int] = {}
        self.ends: dict[TopicPartition, int] = {}
        self.beginnings: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.positions[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_tps.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_tps.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters.get(partition)

    async def position(self, partition: TopicPartition) -> int:
        """Where a seek put it; else, as aiokafka does on assignment, the group's committed offset."""
        return self.positions.get(partition, self.group_committed.get(partition, 0))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.group_committed.update(offsets)

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.group_committed.get(partition)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends.get(tp, 0) for tp in partitions}

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginnings.get(tp, 0) for tp in partitions}

"""Per-partition commit bookkeeping for records that finish out of order.

With several records in flight, record 7 may finish before record 5. Kafka stores one offset per
partition, so we may only commit up to the lowest record still in flight: committing 8 while 5 runs
would lose 5 if the worker died.

When nothing is in flight, the consumer's *position* may be committed instead of the offset after the
last record done: it is past records the worker never sees (transaction markers, aborted records under
`read_committed`, offsets removed by compaction), so the committed offset reaches the end and the lag
reaches 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

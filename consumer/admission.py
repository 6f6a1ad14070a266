"""Admission: which fetched records start now, which wait, and which partitions to pause.

At most `max_in_flight` records run at once. With several request topics (priority lanes, most urgent
first) the `LaneShare` says whose turn it is; the other lanes' partitions are paused so their records
are not fetched ahead of the urgent ones, and a record fetched anyway is sought back and read again
later. aiokafka forgets pauses on every rebalance, so they are restored on assignment.

Admission decides and the worker acts: `admit` returns the records to start, and the worker starts them
and registers them in the one in-flight registry (`commits.CommitTracker`), which admission reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from consumer.commits import Flight
from consumer.lanes import LaneShare


class FetchControl(Protocol):
    """The consumer calls admission needs (`aiokafka.AIOKafkaConsumer` is the real one)."""

    def assignment(self) -> set[TopicPartition]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def paused(self) -> set[TopicPartition]: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    async def position(self, partition: TopicPartition) -> int: ...


class Admission:
    def __init__(
        self,
        consumer: FetchControl,
        flights: Mapping[tuple[TopicPartition, int], Flight],
        *,
        request_topics: Sequence[str],
        max_in_flight: int,
        low_lane_share: float,
    ) -> None:
        self._consumer = consumer
        self._lanes = {topic: lane for lane, topic in enumerate(request_topics)}
        self._max_in_flight = max_in_flight
        self._share = LaneShare(low_lane_share)
        self._next_offset: dict[TopicPartition, int] = {}  # one past the last record admitted
        self._paused: set[TopicPartition] = set()
        self._flights = flights  # the in-flight registry, read only (`CommitTracker.flights`)

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    @property
    def free(self) -> int:
        """Records that may still start now (0 or less when full)."""
        return self._max_in_flight - len(self._flights)

    @property
    def several_lanes(self) -> bool:
        return len(self._lanes) > 1

    def lane_of(self, tp: TopicPartition) -> int:
        """The priority lane of a partition: its topic's index in `request_topics` (0 is most urgent)."""
        return self._lanes.get(tp.topic, len(self._lanes))

    def admit(
        self, tp: TopicPartition, records: Iterable[ConsumerRecord[bytes, bytes]], *, limit: int | None = None
    ) -> list[tuple[ConsumerRecord[bytes, bytes], int]]:
        """The records whose turn it is, in offset order, each with the GPU lane it queues in, at most
        `limit` of them; seeks back to the first that must wait. The caller starts them all before
        admitting more."""
        admitted: list[tuple[ConsumerRecord[bytes, bytes], int]] = []
        for record in records:
            if (tp, record.offset) in self._flights:
                continue  # refetched after a rebalance while it still runs here
            lane = self.lane_of(tp)
            waiting = self._waiting_lanes() | {lane}
            full = len(self._flights) + len(admitted) >= self._max_in_flight or (
                limit is not None and len(admitted) >= limit
            )
            if full or self._share.due(waiting) != lane:
                # Full, or not this lane's turn (fetched despite a pause, or in the same batch): read it
                # again later.
                self._consumer.seek(tp, record.offset)
                break
            self._share.take_turn(waiting)
            # A turn handed down by the share queues for the GPU in the lane it was taken from, so the
            # records admitted after it from that lane do not take it away again.
            admitted.append((record, min(waiting)))
            self._next_offset[tp] = record.offset + 1
        return admitted

    def older_than(self, seconds: float) -> list[Flight]:
        """The records in flight for longer than `seconds`, oldest first."""
        now = time.monotonic()
        return sorted(
            (f for f in self._flights.values() if now - f.admitted_at > seconds), key=lambda f: f.admitted_at
        )

    def oldest_age(self) -> float:
        """Seconds the oldest record in flight has been in flight (0 when none)."""
        return max((time.monotonic() - f.admitted_at for f in self._flights.values()), default=0.0)

    def apply_pauses(self, *, full: bool) -> None:
        """Pause everything when full; otherwise pause the lanes `_held_lanes` holds back."""
        assigned = self._consumer.assignment()
        wanted = set(assigned) if full else self._lanes_to_hold(assigned)
        if wanted != self._paused or (wanted and not wanted <= set(self._consumer.paused())):
            to_resume = (self._paused - wanted) & assigned
            if to_resume:
                self._consumer.resume(*to_resume)
            if wanted:
                self._consumer.pause(*wanted)
            self._paused = wanted

    def on_assigned(self, assigned: Iterable[TopicPartition], *, draining: bool) -> None:
        """Forget what was learnt of the partitions (their position may have moved); restore pauses."""
        for tp in assigned:
            self._next_offset.pop(tp, None)
        # aiokafka forgets pauses on every rebalance: restore them before the next fetch.
        self._paused.clear()
        self.apply_pauses(full=self.free <= 0 or draining)

    async def learn_positions(self) -> None:
        """Where each newly assigned partition starts, so lane backlogs count records never admitted."""
        for tp in self._consumer.assignment() - self._next_offset.keys():
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
                self._next_offset[tp] = await asyncio.wait_for(self._consumer.position(tp), timeout=1.0)

    def _lanes_to_hold(self, assigned: set[TopicPartition]) -> set[TopicPartition]:
        held = self._held_lanes()
        return {tp for tp in assigned if self.lane_of(tp) in held}

    def _held_lanes(self) -> set[int]:
        """Every lane but the one whose turn it is (`LaneShare`), while any lane has work.

        A lane has work while it has records not yet admitted or edits in flight: an urgent edit on the
        GPU holds the lower lanes back as its backlog does, so the slot stays free for the next urgent
        record instead of going to a long low-lane edit that would then run before it.
        """
        due = self._share.due(self._waiting_lanes())
        return set() if due is None else {lane for lane in self._lanes.values() if lane != due}

    def _waiting_lanes(self) -> set[int]:
        lanes = {flight.lane for flight in self._flights.values()}
        lanes.update(self.lane_of(tp) for tp in self._consumer.assignment() if self._unread(tp) > 0)
        return lanes

    def _unread(self, tp: TopicPartition) -> int:
        """Records of `tp` not yet admitted; 1 ("maybe some") until the first fetch tells us."""
        highwater = self._consumer.highwater(tp)
        if highwater is None or tp not in self._next_offset:
            return 1
        return max(0, highwater - self._next_offset[tp])

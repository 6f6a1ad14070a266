"""Chaos soak: workers killed, stopped and added while a backlog drains; committed offsets must never
move backwards on any partition (issue 11: p1 went 13 -> 8 after a member got back a partition it had
owned before), every request is answered and the committed offsets reach the end.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import TopicPartition

from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import encode_event
from consumer.settings import Settings
from schemas.requests import EditRequest
from schemas.results import EditStatus
from tests.consumer.harness import (
    WorkerProcess,
    assert_one_output_per_request,
    by_request,
    librdkafka_produce,
    output_objects,
    png_bytes,
    positions_after,
    prepare,
    request,
    results,
    stage_image,
)

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


class CommittedMonitor:
    """Polls the group's committed offset of every partition; records each move backwards."""

    def __init__(self, settings: Settings, partitions: int) -> None:
        self._settings = settings
        self._tps = [TopicPartition(settings.kafka.request_topic, p) for p in range(partitions)]
        self.latest: dict[int, int] = {}
        self.regressions: list[str] = []
        self.samples = 0

    async def run(self, stop: asyncio.Event) -> None:
        # Not subscribed: it reads the group's commits without joining the group.
        consumer = kafka_io.make_consumer(self._settings.kafka, group_id=self._settings.kafka.group_id)
        await consumer.start()
        try:
            while not stop.is_set():
                for tp in self._tps:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        continue
                    before = self.latest.get(tp.partition)
                    if before is not None and committed < before:
                        self.regressions.append(f"p{tp.partition}: {before} -> {committed}")
                    self.latest[tp.partition] = committed
                self.samples += 1
                await asyncio.sleep(0.05)
        finally:
            await consumer.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_committed_offsets_never_move_backwards_through_kills_stops_and_rebalances(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    partitions = 4
    settings = make_settings(kafka={"topic_partitions": partitions}, worker={"max_in_flight": 2})
    store = await prepare(settings)
    image = stage_image(store, settings, "soak.png", png_bytes(64, 64))
    reqs = [request(settings, image, request_id=f"soak-{i}-{uuid.uuid4().hex[:6]}") for i in range(48)]
    delivered = librdkafka_produce(settings, [(r.request_id.encode(), encode_event(r), []) for r in reqs])
    wanted = positions_after(delivered)

    monitor = CommittedMonitor(settings, partitions)
    stop_monitor = asyncio.Event()
    monitoring = asyncio.create_task(monitor.run(stop_monitor))
    spec = "standin:2500"  # long edits: records are still in flight when their partition moves
    workers = [worker_processes(settings, spec) for _ in range(3)]
    await workers[0].wait_assigned()
    # Faults every ~5 s while the backlog drains: kills (the partition waits for the session timeout,
    # then moves), a graceful stop (handed over at once) and new members (rebalances that give old
    # owners back partitions they had before).
    faults = [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]
    deadline = time.monotonic() + 300
    try:
        for n, sig in enumerate(faults):
            await asyncio.sleep(5.0)
            alive = [w for w in workers if w.returncode is None]
            victim = alive[n % len(alive)]
            victim.signal(sig)
            workers.append(worker_processes(settings, spec))
            if all((monitor.latest.get(p) or 0) >= end for p, end in wanted.items()):
                break
        while not all((monitor.latest.get(p) or 0) >= end for p, end in wanted.items()):
            assert time.monotonic() < deadline, f"stuck: committed {monitor.latest}, wanted {wanted}"
            await asyncio.sleep(0.5)
    finally:
        stop_monitor.set()
        await monitoring
        for worker in workers:
            worker.signal(signal.SIGTERM)
    events = await results(settings, count=len(reqs), timeout_s=30, settle_s=2.0)

    assert monitor.regressions == [], monitor.regressions
    assert monitor.samples > 50
    assert monitor.latest == wanted
    grouped = by_request(events)
    assert set(grouped) == {r.request_id for r in reqs}  # nothing lost
    assert all(e.status is EditStatus.SUCCEEDED for e in events)
    assert_one_output_per_request(events, output_objects(store, settings))  # nothing forked
    exits = [w.returncode for w in workers]
    assert exits.count(-signal.SIGKILL) >= 3, exits


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_partition_back_at_its_old_owner_resumes_from_the_groups_commit_not_its_own(
    make_settings: Callable[..., Settings], worker_processes: StartWorker
) -> None:
    """A finishes work on both partitions; B joins and advances the partition it gets; B leaves. A gets
    that partition back and must resume from B's commit: before the fix it sought to its own stale
    position, redid B's records and committed offsets below B's."""
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "back.png", png_bytes(64, 64))
    monitor = CommittedMonitor(settings, settings.kafka.topic_partitions)
    stop_monitor = asyncio.Event()
    monitoring = asyncio.create_task(monitor.run(stop_monitor))

    async def produce_and_drain(count: int) -> dict[int, int | None]:
        batch = [request(settings, image, request_id=f"back-{uuid.uuid4().hex[:8]}") for _ in range(count)]
        sent.extend(batch)
        delivered.extend(
            librdkafka_produce(settings, [(r.request_id.encode(), encode_event(r), []) for r in batch])
        )
        wanted = positions_after(delivered)
        deadline = time.monotonic() + 60
        while not all((monitor.latest.get(p) or 0) >= end for p, end in wanted.items()):
            assert time.monotonic() < deadline, f"stuck: committed {monitor.latest}, wanted {wanted}"
            await asyncio.sleep(0.3)
        return wanted

    sent: list[EditRequest] = []
    delivered: list[tuple[int, int]] = []
    try:
        first = worker_processes(settings, "standin:50")
        await first.wait_assigned()
        await produce_and_drain(8)  # A finishes records on both partitions
        second = worker_processes(settings, "standin:50")
        await second.wait_assigned()
        await first.wait_for_event("partitions.assigned", count=2)
        await produce_and_drain(12)  # B advances the partition it got
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(30) == 0
        await first.wait_for_event("partitions.assigned", count=3)  # A gets it back
        wanted = await produce_and_drain(8)
        await asyncio.sleep(3.0)  # a stale commit would come within a poll or two
    finally:
        stop_monitor.set()
        await monitoring
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(30) == 0
    events = await results(settings, count=len(sent), timeout_s=30, settle_s=2.0)

    assert monitor.regressions == [], monitor.regressions
    assert monitor.latest == wanted
    grouped = by_request(events)
    assert set(grouped) == {r.request_id for r in sent}
    assert all(len(answers) == 1 for answers in grouped.values()), "a finished request was redone"
    assert_one_output_per_request(events, output_objects(store, settings))

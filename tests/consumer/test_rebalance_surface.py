"""What two workers report across a rebalance (real broker and S3): summed lag and readiness.

The lag the workers export must add up to the group's true lag (what KEDA sees) after a partition
moved from one worker to the other, and /readyz must drop while the group rebalances.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from consumer.kafka import clients as kafka_io
from consumer.settings import Settings
from consumer.worker import EditWorker
from pipeline import EditJob, StandInEditor
from tests.consumer.harness import png_bytes, prepare, publish, request, results, running_worker, stage_image

pytestmark = pytest.mark.integration


def exported_lag(worker: EditWorker) -> dict[tuple[str, str], float]:
    """The `klein_edit_consumer_lag` series of a worker's /metrics text."""
    text = worker.metrics.render().decode()
    return {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "klein_edit_consumer_lag"
        for sample in family.samples
    }


async def true_lag(settings: Settings) -> int:
    """The group's lag as the broker has it: end offset minus committed (or log start) per partition."""
    kafka = settings.kafka
    consumer = kafka_io.make_consumer(kafka, group_id=kafka.group_id)
    await consumer.start()
    try:
        partitions = await kafka_io.topic_partitions(consumer, kafka.request_topic)
        tps = [TopicPartition(kafka.request_topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        total = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            total += ends[tp] - (committed if committed is not None else starts[tp])
        return total
    finally:
        await consumer.stop()


@pytest.mark.timeout(180)
async def test_summed_lag_equals_the_true_lag_after_a_rebalance_and_readiness_drops_during_it(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kafka={"topic_partitions": 4}, worker={"max_in_flight": 1})
    store = await prepare(settings)
    image = stage_image(store, settings, "lag.png", png_bytes(64, 64))
    gate = threading.Event()
    gate.set()

    def hang_while_closed(job: EditJob) -> None:
        gate.wait(60)

    def editor() -> StandInEditor:
        return StandInEditor(edit_ms=5, fault=hang_while_closed)

    async with running_worker(settings, editor) as first:
        for _ in range(4):
            await publish(settings, request(settings, image))
        await results(settings, count=4)  # committed: these leave no lag
        gate.clear()  # from now on edits hang: their records stay uncommitted
        for _ in range(8):
            await publish(settings, request(settings, image))

        readiness = [first.state.ready]  # each change of the first worker's readiness
        sampling = True

        async def sample() -> None:
            # At every turn of the event loop, not every 20 ms: on Apache Kafka a member is out of the
            # group for a few milliseconds of a rebalance (between its revocation and its assignment
            # it awaits JoinGroup and SyncGroup, so the loop turns), where Tansu took ~5 s.
            while sampling:
                if first.state.ready != readiness[-1]:
                    readiness.append(first.state.ready)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        try:
            async with running_worker(settings, editor) as second:
                deadline = time.monotonic() + 60
                while True:
                    want = await true_lag(settings)
                    a, b = exported_lag(first), exported_lag(second)
                    if a and b and sum(a.values()) + sum(b.values()) == want:
                        break
                    assert time.monotonic() < deadline, (a, b, want)
                    await asyncio.sleep(0.5)
                assert want == 8
                assert not set(a) & set(b)  # each partition is reported by its owner only
                assert len(a) + len(b) == 4
                sampling = False
                gate.set()
        finally:
            sampling = False
            gate.set()
            await sampler
    assert False in readiness  # /readyz dropped while the group rebalanced
    assert readiness[0] is True
    assert readiness[-1] is True  # and came back

"""`klein-edit dlq replay` bookkeeping against a real broker: what is replayed, what is committed.

The DLQ records are written here the way the worker writes them (one record per produce request, the
dead-letter headers plus the request's own headers), so each test controls codes and partitions.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from consumer.cli.dlq import REPLAYED_FROM_OFFSET, progress_group, replay_dead_letters
from consumer.kafka import clients as kafka_io
from consumer.kafka.settings import KafkaSettings
from tests.consumer.harness import integration_settings, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
async def kafka(kafka_bootstrap: str) -> KafkaSettings:
    settings = integration_settings(kafka_bootstrap, "http://127.0.0.1:9")  # S3 is not used here
    k = settings.kafka
    await kafka_io.ensure_topics(k, [k.request_topic, k.dlq_topic])
    return k


async def dead_letter(kafka: KafkaSettings, code: str, *, partition: int = 0) -> str:
    """Write one dead-lettered request with error `code`; returns its request id (also its key)."""
    request_id = f"{code.lower()}-{uuid.uuid4().hex[:8]}"
    producer = kafka_io.make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka.dlq_topic,
            value=f'{{"request_id": "{request_id}"}}'.encode(),
            key=request_id.encode(),
            partition=partition,
            headers=[
                ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                (kafka_io.DLQ_ORIGINAL_TOPIC, kafka.request_topic.encode()),
                (kafka_io.DLQ_ORIGINAL_PARTITION, b"0"),
                (kafka_io.DLQ_ORIGINAL_OFFSET, b"7"),
                (kafka_io.DLQ_ERROR_CODE, code.encode()),
                (kafka_io.DLQ_ERROR_MESSAGE, b"boom"),
                (kafka_io.DLQ_ATTEMPTS, b"3"),
            ],
        )
    finally:
        await producer.stop()
    return request_id


async def replayed_ids(kafka: KafkaSettings, count: int) -> list[str]:
    """Request ids on the request topic, one per replayed copy (waits for `count`, then settles)."""
    settings = integration_settings(kafka.bootstrap_servers, "http://127.0.0.1:9")
    settings = settings.model_copy(update={"kafka": kafka})
    records = await read_topic(settings, kafka.request_topic, count=count, timeout_s=20, settle_s=1.0)
    return sorted(bytes(r.key or b"").decode() for r in records)


async def committed(kafka: KafkaSettings, group: str) -> dict[int, int | None]:
    consumer = kafka_io.make_consumer(kafka, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(kafka.dlq_topic, p) for p in (0, 1)]
        consumer.assign(tps)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def test_records_arriving_during_a_replay_are_left_for_the_next_run(kafka: KafkaSettings) -> None:
    before = [await dead_letter(kafka, "STORAGE_UNAVAILABLE") for _ in range(3)]
    during: list[str] = []

    async def another_dead_letter_arrives(record: ConsumerRecord[bytes, bytes]) -> None:
        if not during:
            during.append(await dead_letter(kafka, "STORAGE_UNAVAILABLE"))

    first = await replay_dead_letters(
        kafka, codes=set(), dry_run=False, group_id="ops", on_replayed=another_dead_letter_arrives
    )
    assert first["replayed"] == {"STORAGE_UNAVAILABLE": 3}
    # The snapshot taken at the start is what was committed, not the position past the new record.
    assert await committed(kafka, "ops") == {0: 3, 1: 0}

    second = await replay_dead_letters(kafka, codes=set(), dry_run=False, group_id="ops")
    assert second["replayed"] == {"STORAGE_UNAVAILABLE": 1}
    assert await replayed_ids(kafka, 4) == sorted([*before, *during])  # each exactly once
    third = await replay_dead_letters(kafka, codes=set(), dry_run=False, group_id="ops")
    assert third["replayed"] == {}


async def test_progress_is_kept_per_code(kafka: KafkaSettings) -> None:
    x1 = await dead_letter(kafka, "STORAGE_UNAVAILABLE")
    y1 = await dead_letter(kafka, "GPU_OUT_OF_MEMORY")
    x2 = await dead_letter(kafka, "STORAGE_UNAVAILABLE", partition=1)
    y2 = await dead_letter(kafka, "GPU_OUT_OF_MEMORY", partition=1)
    x3 = await dead_letter(kafka, "STORAGE_UNAVAILABLE")

    storage = await replay_dead_letters(kafka, codes={"STORAGE_UNAVAILABLE"}, dry_run=False, group_id="g")
    assert storage["replayed"] == {"STORAGE_UNAVAILABLE": 3}
    assert storage["not_selected"] == {"GPU_OUT_OF_MEMORY": 2}
    assert storage["committed"] == {
        "g.STORAGE_UNAVAILABLE": {f"{kafka.dlq_topic}-0": 3, f"{kafka.dlq_topic}-1": 2}
    }
    assert await committed(kafka, "g") == {0: None, 1: None}  # the other codes are not done

    # The later run for another code with the same group still finds every record of its code.
    gpu = await replay_dead_letters(kafka, codes={"GPU_OUT_OF_MEMORY"}, dry_run=False, group_id="g")
    assert gpu["replayed"] == {"GPU_OUT_OF_MEMORY": 2}
    assert gpu["already_replayed"] == 0

    # A run for every code replays only what neither did: a record dead-lettered since.
    z = await dead_letter(kafka, "INTERNAL", partition=1)
    everything = await replay_dead_letters(kafka, codes=set(), dry_run=False, group_id="g")
    assert everything["replayed"] == {"INTERNAL": 1}
    assert everything["already_replayed"] == 5
    again = await replay_dead_letters(kafka, codes={"STORAGE_UNAVAILABLE"}, dry_run=False, group_id="g")
    assert again["replayed"] == {}
    assert await replayed_ids(kafka, 6) == sorted([x1, x2, x3, y1, y2, z])


async def test_replayed_records_keep_their_original_headers(kafka: KafkaSettings) -> None:
    await dead_letter(kafka, "INTERNAL")
    await replay_dead_letters(kafka, codes=set(), dry_run=False, group_id=None)
    settings = integration_settings(kafka.bootstrap_servers, "http://127.0.0.1:9")
    (copy,) = await read_topic(
        settings.model_copy(update={"kafka": kafka}), kafka.request_topic, count=1, settle_s=0.5
    )
    headers = dict((key, bytes(value)) for key, value in copy.headers)
    assert headers == {
        "traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        REPLAYED_FROM_OFFSET: b"0:0",
    }


async def test_dry_run_lists_and_neither_publishes_nor_commits(kafka: KafkaSettings) -> None:
    first = await dead_letter(kafka, "STORAGE_UNAVAILABLE")
    await dead_letter(kafka, "INVALID_EVENT")
    listing = await replay_dead_letters(kafka, codes={"STORAGE_UNAVAILABLE"}, dry_run=True, group_id="d")
    assert listing["records"] == [
        {
            "partition": 0,
            "offset": 0,
            "code": "STORAGE_UNAVAILABLE",
            "to_topic": kafka.request_topic,
            "key": first,
            "error": "boom",
            "attempts": "3",
        }
    ]
    assert listing["committed"] == {}
    assert await committed(kafka, progress_group("d", "STORAGE_UNAVAILABLE")) == {0: None, 1: None}
    real = await replay_dead_letters(kafka, codes={"STORAGE_UNAVAILABLE"}, dry_run=False, group_id="d")
    assert real["replayed"] == {"STORAGE_UNAVAILABLE": 1}
    assert await replayed_ids(kafka, 1) == [first]

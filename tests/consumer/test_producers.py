"""What real producers send, produced with librdkafka (confluent-kafka) as platforms do.

Each test asserts the result event, the object in S3, the DLQ record where there is one, and that the
group's committed positions reach past the last record produced: the group keeps moving.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer

from consumer.cli.dlq import replay_dead_letters
from consumer.control import CancelRegistry, ControlReader
from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState
from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import encode_event
from consumer.kafka.settings import KafkaSettings
from consumer.settings import Settings
from pipeline import EditJob, GpuOutOfMemory, StandInEditor
from schemas.control import CancelRequested
from schemas.requests import EditRequest
from schemas.results import EditStatus
from tests.consumer.harness import (
    dead_letters,
    dlq_headers,
    librdkafka_produce,
    output_objects,
    png_bytes,
    positions_after,
    prepare,
    read_topic,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_committed,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CODECS = ("gzip", "snappy", "lz4", "zstd")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_batches_of_every_codec_on_the_request_topic_are_edited(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "codec.png", png_bytes(64, 64))
    delivered: list[tuple[int, int]] = []
    sent: dict[str, str] = {}
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        for codec in CODECS:
            requests = [
                request(settings, image, request_id=f"{codec}-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)
            ]
            sent.update({r.request_id: codec for r in requests})
            # One key: the three records share one partition, so one compressed batch.
            delivered += librdkafka_produce(
                settings,
                [(codec.encode(), encode_event(r), []) for r in requests],
                compression=codec,
                one_batch=True,
            )
        by_id = {r.request_id: r for r in await results(settings, count=len(sent), settle_s=1.0)}
        committed = await wait_for_committed(settings, delivered)
        assert worker.state.problems == {}
    assert set(by_id) == set(sent)
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values()), by_id
    assert sorted(output_objects(store, settings)) == sorted(f"edits/{rid}.png" for rid in sent)
    assert committed == positions_after(delivered)


async def test_batches_of_cancels_in_every_codec_on_the_control_topic_are_applied(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "cancel.png", png_bytes(64, 64))
    doomed = {
        codec: request(settings, image, request_id=f"doomed-{codec}-{uuid.uuid4().hex[:6]}")
        for codec in CODECS
    }
    kept = request(settings, image)
    for codec, req in doomed.items():
        cancels = [CancelRequested(request_id=req.request_id), CancelRequested(request_id=f"other-{codec}")]
        librdkafka_produce(
            settings,
            [(b"cancels", encode_event(c), []) for c in cancels],
            topic=settings.kafka.control_topic,
            compression=codec,
            one_batch=True,
        )
    editor = StandInEditor(edit_ms=20)
    async with running_worker(settings, lambda: editor) as worker:
        delivered = librdkafka_produce(
            settings, [(r.request_id.encode(), encode_event(r), []) for r in [*doomed.values(), kept]]
        )
        by_id = {r.request_id: r for r in await results(settings, count=len(doomed) + 1, settle_s=1.0)}
        committed = await wait_for_committed(settings, delivered)
        assert worker.state.problems == {}
        assert worker.metrics.control_stalled._value.get() == 0
    for req in doomed.values():
        assert by_id[req.request_id].status is EditStatus.CANCELED, by_id[req.request_id]
    assert by_id[kept.request_id].status is EditStatus.SUCCEEDED
    assert editor.edits == 1
    assert list(output_objects(store, settings)) == [f"edits/{kept.request_id}.png"]
    assert committed == positions_after(delivered)


async def test_a_control_reader_that_cannot_make_progress_is_a_readiness_problem_and_a_metric() -> None:
    state, metrics = WorkerState(), WorkerMetrics()
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", request_timeout_ms=1000)
    reader = ControlReader(kafka, CancelRegistry(10), state=state, metrics=metrics, stall_after_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        for _ in range(100):
            if "control" in state.problems:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    assert "control reader stalled" in state.problems["control"]
    assert metrics.control_stalled._value.get() == 1
    assert (
        sum(s.value for m in metrics.control_errors.collect() for s in m.samples if s.name.endswith("_total"))
        >= 1
    )
    state.model_ready = state.in_group = True
    assert not state.ready
    assert state.not_ready_reason.startswith("control: control reader stalled")


@pytest.mark.apache_kafka
async def test_a_transactional_producer_commits_and_aborts_and_committed_offsets_reach_the_end(
    make_settings: Callable[..., Settings],
) -> None:
    """Committed transactions are edited, aborted ones never (`read_committed`); the committed offset
    passes the transaction markers, so the lag reaches 0 (Apache Kafka only: Tansu fails InitProducerId
    and returns aborted records to `read_committed` readers)."""
    settings = make_settings()
    assert settings.kafka.isolation_level == "read_committed"
    store = await prepare(settings)
    image = stage_image(store, settings, "tx.png", png_bytes(64, 64))
    committed_reqs = [request(settings, image) for _ in range(2)]
    aborted_req = request(settings, image)
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "transactional.id": unique("tx"),
            "linger.ms": 0,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for req in committed_reqs:
        producer.produce(settings.kafka.request_topic, key=b"tx", value=encode_event(req))
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(settings.kafka.request_topic, key=b"tx", value=encode_event(aborted_req))
    producer.abort_transaction(30)
    editor = StandInEditor(edit_ms=20)
    async with running_worker(settings, lambda: editor):
        by_id = {r.request_id: r for r in await results(settings, count=2, settle_s=3.0)}
        lags = await wait_for_no_lag(settings)
    assert set(by_id) == {r.request_id for r in committed_reqs}
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values())
    assert editor.edits == 2
    assert sorted(output_objects(store, settings)) == sorted(
        f"edits/{r.request_id}.png" for r in committed_reqs
    )
    assert set(lags.values()) == {0}


def transactional_producer(settings: Settings, delivered: list[tuple[int, int]]) -> Producer:
    """A librdkafka transactional producer, its transactions initialised; each acknowledged record's
    `(partition, offset)` is appended to `delivered` (acknowledged is not committed)."""

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "transactional.id": unique("tx"),
            "linger.ms": 0,
            "on_delivery": on_delivery,
        }
    )
    producer.init_transactions(30)
    return producer


def transaction(producer: Producer, settings: Settings, requests: list[EditRequest], *, commit: bool) -> None:
    producer.begin_transaction()
    for req in requests:
        producer.produce(settings.kafka.request_topic, key=req.request_id.encode(), value=encode_event(req))
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


async def partition_offsets(settings: Settings, partition: int = 0) -> tuple[int, int]:
    """(last stable offset, high watermark) of a request-topic partition: what a `read_committed` and
    a `read_uncommitted` reader see as its end."""
    tp = TopicPartition(settings.kafka.request_topic, partition)
    ends = []
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = kafka_io.make_consumer(settings.kafka, group_id=None, isolation_level=isolation)
        await consumer.start()
        try:
            ends.append((await consumer.end_offsets([tp]))[tp])
        finally:
            await consumer.stop()
    return ends[0], ends[1]


async def stored_offsets(settings: Settings, partition: int = 0) -> list[int]:
    """The offsets of the data records a request-topic partition still holds (`read_uncommitted`:
    aborted ones included; control records are never returned)."""
    tp = TopicPartition(settings.kafka.request_topic, partition)
    consumer = kafka_io.make_consumer(settings.kafka, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        offsets: list[int] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            offsets += [record.offset for record in batch.get(tp, [])]
        return offsets
    finally:
        await consumer.stop()


@pytest.mark.apache_kafka
async def test_read_committed_waits_at_the_last_stable_offset_while_a_transaction_is_open(
    make_settings: Callable[..., Settings],
) -> None:
    """A request in an open transaction holds the partition's last stable offset (LSO): the worker
    (`read_committed`) edits neither it nor a plain request behind it, commits nothing past the LSO,
    and stays ready; once the transaction commits it edits both, once each, and commits past the
    commit marker (Apache Kafka only: Tansu has no transactions)."""
    settings = make_settings(kafka={"topic_partitions": 1})
    store = await prepare(settings)
    image = stage_image(store, settings, "lso.png", png_bytes(64, 64))
    in_transaction = request(settings, image, request_id=unique("in-tx"))
    behind = request(settings, image, request_id=unique("behind"))
    delivered: list[tuple[int, int]] = []
    producer = transactional_producer(settings, delivered)
    producer.begin_transaction()
    producer.produce(
        settings.kafka.request_topic,
        key=in_transaction.request_id.encode(),
        value=encode_event(in_transaction),
    )
    producer.flush(30)  # on the broker, its transaction still open
    delivered += librdkafka_produce(settings, [(behind.request_id.encode(), encode_event(behind), [])])
    assert delivered == [(0, 0), (0, 1)]
    assert await partition_offsets(settings) == (0, 2)

    editor = StandInEditor(edit_ms=20)
    async with running_worker(settings, lambda: editor) as worker:
        held = await results(settings, count=1, timeout_s=6.0)
        committed_while_open = await wait_for_committed(settings, [(0, 0)], timeout_s=0.0)
        problems_while_open = dict(worker.state.problems)
        producer.commit_transaction(30)
        by_id = {r.request_id: r for r in await results(settings, count=2, settle_s=2.0)}
        committed = await wait_for_committed(settings, [(0, 2)])  # the commit marker is offset 2
        lags = await wait_for_no_lag(settings)
    assert held == []
    assert committed_while_open[0] in (None, 0)
    assert problems_while_open == {}
    assert set(by_id) == {in_transaction.request_id, behind.request_id}
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values()), by_id
    assert editor.edits == 2
    assert committed == {0: 3}
    assert await partition_offsets(settings) == (3, 3)
    assert set(lags.values()) == {0}


@pytest.mark.apache_kafka
async def test_a_compacted_transactional_request_topic_is_edited_across_its_gaps_and_markers(
    make_settings: Callable[..., Settings],
) -> None:
    """A compacted request topic written in transactions: once the log cleaner has removed a
    superseded request (same key) and the aborted transaction's records, the worker edits every
    surviving committed request once, never the aborted one, and commits past the gaps and the
    transaction markers to the end (Apache Kafka only: Tansu has no transactions)."""
    settings = make_settings(kafka={"topic_partitions": 1})
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        # Segments roll after 100 ms, and any dirt makes one worth cleaning: the cleaner compacts
        # within seconds instead of waiting for a 1 GiB segment or a week.
        compacted = {
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "100",
        }
        await admin.create_topics(
            [NewTopic(settings.kafka.request_topic, 1, replication_factor=1, topic_configs=compacted)]
        )
    finally:
        await admin.close()
    store = await prepare(settings)
    image = stage_image(store, settings, "compacted.png", png_bytes(64, 64))
    first = request(settings, image, request_id=unique("first"))
    replaced = request(settings, image, request_id=unique("kept"), seed=1)
    kept = request(settings, image, request_id=replaced.request_id, seed=2)  # same key: compaction keeps it
    aborted = request(settings, image, request_id=unique("aborted"))
    last = request(settings, image, request_id=unique("last"))
    delivered: list[tuple[int, int]] = []
    producer = transactional_producer(settings, delivered)
    transaction(producer, settings, [first, replaced], commit=True)  # offsets 0, 1; marker 2
    transaction(producer, settings, [aborted], commit=False)  # 3; marker 4
    transaction(producer, settings, [kept], commit=True)  # 5; marker 6
    await asyncio.sleep(0.5)  # past segment.ms: the next append rolls the segment, so the cleaner may
    transaction(producer, settings, [last], commit=True)  # clean 0-6; 7; marker 8
    assert [offset for _, offset in delivered] == [0, 1, 3, 5, 7]

    deadline = asyncio.get_running_loop().time() + 60
    while 1 in (stored := await stored_offsets(settings)):
        assert asyncio.get_running_loop().time() < deadline, f"not compacted in 60 s: {stored}"
        await asyncio.sleep(1.0)
    assert {0, 5, 7} <= set(stored)
    assert 1 not in stored

    editor = StandInEditor(edit_ms=20)
    async with running_worker(settings, lambda: editor):
        by_id = {r.request_id: r for r in await results(settings, count=3, settle_s=2.0)}
        committed = await wait_for_committed(settings, [(0, 8)])
        lags = await wait_for_no_lag(settings)
    assert set(by_id) == {first.request_id, kept.request_id, last.request_id}
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values()), by_id
    assert by_id[kept.request_id].params.seed == 2  # the version compaction kept
    assert editor.edits == 3
    assert sorted(output_objects(store, settings)) == sorted(
        f"edits/{r.request_id}.png" for r in (first, kept, last)
    )
    assert committed == {0: 9}
    assert set(lags.values()) == {0}


async def test_an_oversize_record_fails_with_a_bounded_dlq_copy_and_the_partition_moves_on(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "big.png", png_bytes(64, 64))
    big = request(settings, image, request_id=unique("big"))
    after = request(settings, image, request_id=unique("after"))
    raw = encode_event(big)[:-1] + b" " * (2_621_440 - len(encode_event(big))) + b"}"  # valid JSON, 2.5 MiB
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        delivered = librdkafka_produce(
            settings, [(b"same", raw, [("tenant-id", b"t-9")]), (b"same", encode_event(after), [])]
        )
        by_id = {r.request_id: r for r in await results(settings, count=2, settle_s=1.0)}
        (dead,) = await dead_letters(settings, count=1, settle_s=1.0)
        committed = await wait_for_committed(settings, delivered)
        assert worker.metrics.retries.labels(code="INVALID_EVENT")._value.get() == 0
        assert worker.state.problems == {}
    failed = by_id[big.request_id]
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code.value == "INVALID_EVENT"
    assert f"{len(raw)} bytes" in failed.error.message
    assert by_id[after.request_id].status is EditStatus.SUCCEEDED
    headers = dlq_headers(dead)
    assert headers[kafka_io.DLQ_TRUNCATED] == "true"
    assert headers[kafka_io.DLQ_ORIGINAL_SIZE] == str(len(raw))
    assert headers[kafka_io.DLQ_ERROR_CODE] == "INVALID_EVENT"
    assert dead.value == raw[: kafka_io.DLQ_PREVIEW_BYTES]
    assert list(output_objects(store, settings)) == [f"edits/{after.request_id}.png"]
    assert committed == positions_after(delivered)


async def test_a_tombstone_after_a_success_is_skipped_without_a_result_and_committed_past(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "tomb.png", png_bytes(64, 64))
    req = request(settings, image, request_id=unique("tomb"))
    key = req.request_id.encode()
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        delivered = librdkafka_produce(settings, [(key, encode_event(req), []), (key, None, [])])
        events = await results(settings, count=1, settle_s=3.0)
        committed = await wait_for_committed(settings, delivered)
        assert worker.metrics.tombstones._value.get() == 1
    assert [(e.request_id, e.status) for e in events] == [(req.request_id, EditStatus.SUCCEEDED)]
    assert list(output_objects(store, settings)) == [f"edits/{req.request_id}.png"]
    assert await dead_letters(settings, count=1, timeout_s=2.0) == []
    assert committed == positions_after(delivered)


async def test_enveloped_requests_are_unwrapped_edited_and_echo_their_cloudevent(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "env.png", png_bytes(64, 64))
    reqs = {name: request(settings, image, request_id=unique(name)) for name in ENVELOPES}
    ce = {"specversion": "1.0", "source": "/shop", "type": "com.example.edit"}  # + id, data
    structured = [("content-type", b"application/cloudevents+json")]

    def body(name: str) -> dict[str, object]:
        return json.loads(encode_event(reqs[name]))

    records = {
        "structured": (
            json.dumps(
                {**ce, "id": "s-1", "datacontenttype": "application/json", "data": body("structured")}
            ),
            structured,
        ),
        "dapr": (
            json.dumps(
                {
                    **ce,
                    "id": "d-1",
                    "type": "com.dapr.event.sent",
                    "topic": settings.kafka.request_topic,
                    "pubsubname": "pubsub",
                    "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "datacontenttype": "application/json",
                    "data": body("dapr"),
                }
            ),
            structured,
        ),
        "binary": (
            json.dumps(body("binary")),
            [("ce_specversion", b"1.0"), ("ce_id", b"b-1"), ("ce_source", b"/shop"), ("ce_type", b"t.b")],
        ),
        "bom": ("\ufeff" + json.dumps(body("bom")), []),
        "registry": (json.dumps(body("registry")), []),
    }
    values = {name: value.encode() for name, (value, _) in records.items()}
    values["registry"] = b"\x00\x00\x00\x00\x2a" + values["registry"]  # magic byte + schema id 42
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)):
        delivered = librdkafka_produce(
            settings, [(reqs[name].request_id.encode(), values[name], records[name][1]) for name in ENVELOPES]
        )
        by_id = {r.request_id: r for r in await results(settings, count=len(ENVELOPES), settle_s=1.0)}
        committed = await wait_for_committed(settings, delivered)
    assert set(by_id) == {r.request_id for r in reqs.values()}
    assert all(r.status is EditStatus.SUCCEEDED for r in by_id.values()), by_id
    meta = {name: by_id[reqs[name].request_id].metadata for name in ENVELOPES}
    assert meta["structured"] == {"ce_id": "s-1", "ce_source": "/shop", "ce_type": "com.example.edit"}
    assert meta["dapr"] == {"ce_id": "d-1", "ce_source": "/shop", "ce_type": "com.dapr.event.sent"}
    assert meta["binary"] == {"ce_id": "b-1", "ce_source": "/shop", "ce_type": "t.b"}
    assert meta["bom"] == meta["registry"] == {}
    assert sorted(output_objects(store, settings)) == sorted(
        f"edits/{r.request_id}.png" for r in reqs.values()
    )
    assert await dead_letters(settings, count=1, timeout_s=2.0) == []
    assert committed == positions_after(delivered)


ENVELOPES = ("structured", "dapr", "binary", "bom", "registry")


async def test_dlq_copies_keep_the_original_headers_and_replay_restores_them(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(worker={"max_attempts": 1})
    store = await prepare(settings)
    image = stage_image(store, settings, "hdr.png", png_bytes(64, 64))
    req = request(settings, image, request_id=unique("hdr"))
    original = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("ce_id", b"evt-1"),
        ("ce_source", b"/shop"),
        ("ce_type", b"com.example.edit"),
        ("ce_specversion", b"1.0"),
        ("tenant-id", b"acme"),
    ]
    gpu_broken = True

    def fault(job: EditJob) -> None:
        if gpu_broken:
            raise GpuOutOfMemory("CUDA out of memory (injected)")

    async with running_worker(settings, lambda: StandInEditor(edit_ms=20, fault=fault)):
        librdkafka_produce(settings, [(req.request_id.encode(), encode_event(req), original)])
        (failed,) = await results(settings, count=1)
        (dead,) = await dead_letters(settings, count=1)
        gpu_broken = False  # the cause is fixed: replay
        summary = await replay_dead_letters(
            settings.kafka, codes=set(), dry_run=False, group_id=f"replay-{settings.kafka.group_id}"
        )
        events = await results(settings, count=2)
        lags = await wait_for_no_lag(settings)
        replayed = await read_topic(settings, settings.kafka.request_topic, count=2)
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code.value == "GPU_OUT_OF_MEMORY"
    copied = [(k, bytes(v)) for k, v in dead.headers if not k.startswith("klein-edit.")]
    assert copied == original
    assert dlq_headers(dead)[kafka_io.DLQ_ERROR_CODE] == "GPU_OUT_OF_MEMORY"
    assert summary["replayed"] == {"GPU_OUT_OF_MEMORY": 1}
    request_records = [r for r in replayed if dict(r.headers).get("klein-edit.replayed-from-offset")]
    (again,) = request_records
    assert [(k, bytes(v)) for k, v in again.headers if not k.startswith("klein-edit.")] == original
    assert again.value == encode_event(req)
    assert [e.status for e in events] == [EditStatus.FAILED, EditStatus.SUCCEEDED]
    assert events[1].metadata == {"ce_id": "evt-1", "ce_source": "/shop", "ce_type": "com.example.edit"}
    assert list(output_objects(store, settings)) == [f"edits/{req.request_id}.png"]
    assert set(lags.values()) == {0}

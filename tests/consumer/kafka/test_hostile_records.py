"""Records no producer should send, through a running worker and a real broker: each is refused with
INVALID_EVENT and a bounded DLQ copy, its refusal says what it is, and the worker keeps consuming.

The rules themselves are unit-tested on the codec (test_codec.py, test_envelope.py) and the publisher
(tests/consumer/test_publisher.py); this shows the path production takes: the consume loop, the salvage
of an id before admission, the handler, the DLQ producer.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable

import pytest

from consumer.kafka import clients as kafka_io
from consumer.kafka.codec import REQUEST_SCHEMA, encode_event
from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.results import EditStatus
from tests.consumer.harness import (
    dead_letters,
    dlq_headers,
    librdkafka_produce,
    png_bytes,
    positions_after,
    prepare,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_committed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BOMB = b"[" * 100_000 + b"]" * 100_000  # 200 KB, under the request size limit (CVE-2024-27454)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_hostile_and_foreign_records_are_refused_and_the_worker_keeps_consuming(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "hostile.png", png_bytes(64, 64))
    connect = request(settings, image, request_id=unique("connect"))
    after = request(settings, image, request_id=unique("after"))
    ids = {name: unique(name) for name in ("bomb", "s3", "avro", "nan")}
    long_key = b"k" * (kafka_io.DLQ_PREVIEW_BYTES * 2)
    s3_event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {}}]}
    nan = (
        json.dumps({"request_id": ids["nan"], "image": image, "prompt": "p"})[:-1]
        + ', "guidance_scale": NaN}'
    )
    connect_envelope = {
        "schema": {"type": "struct", "optional": False},
        "payload": json.loads(encode_event(connect)),
    }
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (ids["bomb"].encode(), BOMB, []),
        (ids["s3"].encode(), json.dumps(s3_event).encode(), []),
        (ids["avro"].encode(), b"\x00\x00\x00\x00\x07" + b"\x02\x0ahello", []),
        (ids["nan"].encode(), nan.encode(), []),
        (long_key, b"\xff not json", []),
        (connect.request_id.encode(), json.dumps(connect_envelope).encode(), []),
        (after.request_id.encode(), encode_event(after), []),
    ]
    async with running_worker(settings, lambda: StandInEditor(edit_ms=20)) as worker:
        delivered = librdkafka_produce(settings, records)
        events = await results(settings, count=len(records), settle_s=1.0)
        dead = await dead_letters(settings, count=5, settle_s=1.0)
        committed = await wait_for_committed(settings, delivered)
        assert worker.state.problems == {}
    by_id = {e.request_id: e for e in events}
    messages = {name: by_id[ids[name]].error for name in ids}
    assert all(m is not None and m.code.value == "INVALID_EVENT" for m in messages.values()), messages
    assert "more than 64 deep" in str(messages["bomb"])
    assert "not an edit request: an S3 event notification" in str(messages["s3"])
    assert REQUEST_SCHEMA in str(messages["s3"])
    assert "Schema Registry frame (schema id 7) whose body is not JSON" in str(messages["avro"])
    assert "guidance_scale: not a number (NaN)" in str(messages["nan"])
    assert by_id[connect.request_id].status is EditStatus.SUCCEEDED
    assert by_id[after.request_id].status is EditStatus.SUCCEEDED
    assert len(dead) == 5
    (cut,) = [d for d in dead if dlq_headers(d).get(kafka_io.DLQ_KEY_TRUNCATED) == "true"]
    assert cut.key == long_key[: kafka_io.DLQ_PREVIEW_BYTES]
    assert dlq_headers(cut)[kafka_io.DLQ_ORIGINAL_KEY_SIZE] == str(len(long_key))
    assert dlq_headers(cut)[kafka_io.DLQ_ORIGINAL_KEY_SHA256] == hashlib.sha256(long_key).hexdigest()
    assert committed == positions_after(delivered)

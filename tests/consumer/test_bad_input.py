"""Every bad input is answered: a failed result naming the problem, the record committed, never retried.

Malformed records and requests that break a limit (`INVALID_EVENT`) are also copied, raw, to the DLQ.
One in-process worker per test handles the whole batch, so the partition is also shown to move on.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable

import pytest
from PIL import Image

from consumer.kafka import clients as kafka_io
from consumer.settings import Settings
from pipeline import StandInEditor
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.consumer.harness import (
    by_request,
    dead_letters,
    dlq_headers,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    publish,
    read_topic,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


async def test_malformed_records_fail_with_the_field_named_and_go_to_the_dlq(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    tag = uuid.uuid4().hex[:6]
    good = {"image": image, "prompt": "make it blue", "num_inference_steps": 25}
    # (key, raw value, words the error message must contain); the key is how the failure is keyed
    # when the body has no usable request_id.
    cases: dict[str, tuple[bytes | None, bytes, list[str]]] = {
        f"notjson-{tag}": (f"notjson-{tag}".encode(), b"{this is not json", ["not valid JSON"]),
        f"array-{tag}": (f"array-{tag}".encode(), b"[1, 2, 3]", ["must be a JSON object"]),
        f"noid-{tag}": (f"noid-{tag}".encode(), json.dumps(good).encode(), ["request_id"]),
        f"hex-{tag}": (
            None,
            json.dumps(
                {
                    **good,
                    "request_id": f"hex-{tag}",
                    "prompt": None,
                    "recolor": [{"target": "the shoe", "color": "#12345G"}],
                }
            ).encode(),
            ["recolor[0].color"],
        ),
        f"steps-{tag}": (
            None,
            json.dumps({**good, "request_id": f"steps-{tag}", "num_inference_steps": 10}).encode(),
            ["num_inference_steps"],
        ),
        f"typo-{tag}": (
            None,
            json.dumps({**good, "request_id": f"typo-{tag}", "num_inference_step": 30}).encode(),
            ["num_inference_step", "did you mean 'num_inference_steps'"],
        ),
    }
    garbage = b"\xff\xfe\x00binary garbage"  # no key, no id: keyed by where it was read
    ok = request(settings, image, seed=1)
    editor = StandInEditor(edit_ms=0)

    async with running_worker(settings, lambda: editor):
        for key, raw, _ in cases.values():
            await publish(settings, raw, key=key, topic=settings.kafka.request_topic)
        await publish(settings, garbage)
        await publish(settings, ok)
        events = await results(settings, count=len(cases) + 2)
        dlq = await dead_letters(settings, count=len(cases) + 1, settle_s=1.0)
        assert await wait_for_no_lag(settings) == no_lag(settings)

    results_by_id = by_request(events)
    assert len(events) == len(cases) + 2
    for request_id, (_, _, words) in cases.items():
        (failed,) = results_by_id[request_id]
        assert failed.status is EditStatus.FAILED
        assert failed.error is not None
        assert failed.error.code is ErrorCode.INVALID_EVENT
        assert failed.error.retryable is False
        for word in words:
            assert word in failed.error.message, (request_id, failed.error.message)
        assert failed.output is None
        assert failed.cost.usd == 0
    (fallback,) = [e for e in events if e.request_id.startswith("invalid:")]
    assert fallback.request_id.startswith(f"invalid:{settings.kafka.request_topic}:")
    assert fallback.error is not None
    assert fallback.error.code is ErrorCode.INVALID_EVENT
    (succeeded,) = results_by_id[ok.request_id]
    assert succeeded.status is EditStatus.SUCCEEDED  # the partition moved on past the bad records
    assert editor.edits == 1

    # The DLQ holds each malformed record byte for byte, with where it came from and why.
    originals = {
        (r.partition, r.offset): r.value
        for r in await read_topic(settings, settings.kafka.request_topic, count=len(cases) + 2)
    }
    assert len(dlq) == len(cases) + 1
    assert {r.value for r in dlq} == {raw for _, raw, _ in cases.values()} | {garbage}
    for record in dlq:
        headers = dlq_headers(record)
        assert headers[kafka_io.DLQ_ORIGINAL_TOPIC] == settings.kafka.request_topic
        origin = (int(headers[kafka_io.DLQ_ORIGINAL_PARTITION]), int(headers[kafka_io.DLQ_ORIGINAL_OFFSET]))
        assert originals[origin] == record.value
        assert headers[kafka_io.DLQ_ERROR_CODE] == "INVALID_EVENT"
        assert headers[kafka_io.DLQ_ERROR_MESSAGE]
        assert headers[kafka_io.DLQ_ATTEMPTS] == "1"
    assert sorted(output_objects(store, settings)) == [f"edits/{ok.request_id}.png"]

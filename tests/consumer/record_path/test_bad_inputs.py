"""Bad inputs on the production record path (fakes of S3, the ledger and Kafka): each fails with its code
and a message naming the problem, costs nothing, is never retried, and only limit breaches are
dead-lettered. One end-to-end case of the kind stays on the broker (tests/consumer/test_bad_input.py)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from consumer.kafka import clients as kafka_io
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from storage import S3Location
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(60)


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


async def test_bad_inputs_fail_with_their_code_and_only_limit_breaches_are_dead_lettered(
    make_path: Callable[..., RecordPath],
) -> None:
    gone = "gone-bucket"
    path = make_path(s3={"max_image_bytes": 100_000, "allowed_buckets": [gone, "outputs"]})
    out = path.settings.s3.output_bucket
    fine = path.stage("fine.png", png(64, 64))
    noisy = Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3))  # ~49 KB, under the byte limit
    staged = {
        "text.png": b"hello, I am not an image",
        "truncated.png": _encode(noisy)[:-10_000],
        "bomb.png": _encode(Image.new("1", (10_000, 10_000))),  # ~100 MP in a few KB
        "wide.png": _encode(Image.new("1", (8_000, 5_100))),  # 40.8 MP: just over the pixel limit
        "big.png": _encode(Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))),  # ~197 KB
    }
    for key, data in staged.items():
        path.stage(key, data)
    path.store.put_object(S3Location(out, "edits/inputs/src.png"), png(32, 32))
    dest = f"s3://{out}/edits/inputs/src.png"
    # (request, code, words in the message, dead-lettered?)
    cases = [
        (path.request("missing.png"), ErrorCode.INPUT_NOT_FOUND, ["missing.png"], False),
        (path.request(f"s3://{gone}/x.png"), ErrorCode.INPUT_NOT_FOUND, [gone], False),
        (
            path.request("s3://elsewhere-bucket/x.png"),
            ErrorCode.INPUT_FORBIDDEN,
            ["image", "elsewhere"],
            False,
        ),
        (path.request("text.png"), ErrorCode.INVALID_IMAGE, ["image"], False),
        (path.request("truncated.png"), ErrorCode.INVALID_IMAGE, ["image"], False),
        (path.request("bomb.png"), ErrorCode.INPUT_TOO_LARGE, ["image"], False),
        (path.request("wide.png"), ErrorCode.INPUT_TOO_LARGE, ["pixels"], False),
        (path.request("big.png"), ErrorCode.INPUT_TOO_LARGE, ["bytes"], False),
        (path.request(fine, references=[fine] * 5), ErrorCode.INVALID_EVENT, ["references"], True),
        (
            path.request(fine, output={"uri": f"s3://{out}/edits/../x.png"}),
            ErrorCode.INVALID_EVENT,
            ["output.uri"],
            True,
        ),
        (
            path.request(fine, output={"uri": f"s3://{path.settings.s3.input_bucket}/edits/x.png"}),
            ErrorCode.INVALID_EVENT,
            ["output.uri", "output bucket"],
            True,
        ),
        (path.request(dest, output={"uri": dest}), ErrorCode.INVALID_EVENT, ["output.uri", "inputs"], True),
        (
            path.request(fine, output={"uri": f"s3://{out}/klein-edit-state/attempts/x.json"}),
            ErrorCode.INVALID_EVENT,
            ["output.uri"],
            True,
        ),
    ]
    late = path.request(fine, deadline=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    ok = path.request(fine)

    for req, *_ in cases:
        assert await path.handle(req)
    assert await path.handle(late)
    assert await path.handle(ok)

    by_id = {event.request_id: event for event in path.results()}
    for req, code, words, _ in cases:
        failed = by_id[req.request_id]
        assert failed.status is EditStatus.FAILED, req
        assert failed.error is not None
        assert failed.error.code is code, (req, failed.error)
        assert failed.error.retryable is False
        for word in words:
            assert word in failed.error.message, (word, failed.error.message)
        assert failed.output is None
        assert failed.cost.usd == 0
        assert failed.attempt == 1
        assert failed.gpu_ms == 0  # none of the bad requests reached the GPU
    expired = by_id[late.request_id]
    assert expired.error is not None
    assert expired.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert expired.cost.usd == 0
    assert expired.gpu_ms == 0
    assert by_id[ok.request_id].status is EditStatus.SUCCEEDED

    dead = {req.request_id for req, *_, is_dead in cases if is_dead}
    dlq = path.dead_letters()
    assert {json.loads(r.value or b"{}")["request_id"] for r in dlq} == dead
    assert {dict(r.headers)[kafka_io.DLQ_ERROR_CODE] for r in dlq} == {b"INVALID_EVENT"}
    written = sorted(key for key in path.store.objects if key.startswith(f"{out}/"))
    assert written == sorted([f"{out}/edits/inputs/src.png", f"{out}/edits/{ok.request_id}.png"])


async def test_strict_mode_rejects_every_unknown_field(make_path: Callable[..., RecordPath]) -> None:
    path = make_path(worker={"reject_unknown_fields": True})
    image = path.stage("a.png", png(64, 64))
    body = {"request_id": "newer-1", "image": image, "prompt": "make it blue", "priority": "high"}

    assert await path.handle(json.dumps(body).encode(), key=b"newer-1")

    event = path.result()
    assert event.status is EditStatus.FAILED
    assert event.error is not None
    assert event.error.code is ErrorCode.INVALID_EVENT
    assert event.error.message == "priority: unknown field (the worker rejects unknown fields)"
    assert not [key for key in path.store.objects if key.startswith("outputs/")]


async def test_fields_a_newer_producer_adds_are_ignored_and_reported(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    body = {
        "request_id": "newer-2",
        "image": image,
        "prompt": "make it blue",
        "num_inference_steps": 25,
        "priority": "high",
        "output": {"format": "png", "dpi": 300},
    }
    assert await path.handle(json.dumps(body).encode(), key=b"newer-2")
    event = path.result()
    assert event.status is EditStatus.SUCCEEDED
    assert set(event.warnings) == {"unknown field ignored: priority", "unknown field ignored: output.dpi"}

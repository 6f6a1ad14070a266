"""LoRA adapters through the worker, on a real broker and S3 server with the tiny model.

Adapters are made here with peft (tests/adapters.py) and uploaded to an allow-listed adapter bucket.
Every request uses the same image and seed, so outputs can be compared byte for byte. Refused adapters
(codes, cost 0, no DLQ) are rules of one record: tests/consumer/record_path/test_adapter_layouts.py.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from consumer.settings import Settings
from pipeline import KleinEditor
from pipeline.config import TINY_RANDOM, PipelineSettings
from schemas.requests import EditRequest
from schemas.results import EditCompleted, EditStatus
from storage import ImageStore, S3Location
from tests.adapters import adapter_file
from tests.consumer.harness import (
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
SEED = 21


@pytest.fixture(scope="module")
def fresh_editor() -> KleinEditor:
    """An editor no other test has loaded adapters into: its first edit is a fresh worker's output."""
    return KleinEditor.load(PipelineSettings(model=TINY_RANDOM, device="cpu", warmup=False))


def adapter_settings(make_settings: Callable[..., Settings], **s3: Any) -> Settings:
    bucket = f"adapters-{uuid.uuid4().hex[:10]}"
    return make_settings(s3={"adapter_buckets": [bucket], **s3})


def upload(store: ImageStore, settings: Settings, key: str, data: bytes) -> str:
    location = S3Location(settings.s3.adapter_buckets[0], key)
    store.put_object(location, data, content_type="application/octet-stream")
    return location.uri


async def run_one(settings: Settings, req: EditRequest, seen: list[EditCompleted]) -> EditCompleted:
    """Publish one request and wait for its result (so edits run in exactly this order)."""
    await publish(settings, req)
    got = await results(settings, count=len(seen) + 1, timeout_s=90)
    result = [r for r in got if r.request_id == req.request_id][-1]
    seen.append(result)
    return result


def lookups(worker: Any, result: str) -> float:
    value = worker.metrics.registry.get_sample_value("klein_edit_adapter_lookups_total", {"result": result})
    return value or 0.0


async def test_adapters_change_scale_combine_cache_and_never_leak(
    make_settings: Callable[..., Settings], fresh_editor: KleinEditor
) -> None:
    settings = adapter_settings(make_settings)
    store = await prepare(settings)
    store.ensure_bucket(settings.s3.adapter_buckets[0])
    image = stage_image(store, settings, "base.png", png_bytes(96, 80))
    first_data, second_data = adapter_file(seed=31), adapter_file(seed=32, rank=2)
    first = upload(store, settings, "brand/first.safetensors", first_data)
    second_key = "style/second.safetensors"
    second = upload(store, settings, second_key, second_data)
    seen: list[EditCompleted] = []

    def edit(**fields: Any) -> EditRequest:
        # Unmarked files: the XMP marking names the request, so only stripped outputs of different
        # requests can be compared byte for byte.
        return request(settings, image, seed=SEED, output={"metadata": "strip"}, **fields)

    async with running_worker(settings, lambda: fresh_editor) as worker:
        plain = await run_one(settings, edit(), seen)
        with_first = await run_one(settings, edit(loras=[{"uri": first}]), seen)
        zero = await run_one(settings, edit(loras=[{"uri": first, "scale": 0.0}]), seen)
        # A bare key names an object in the first adapter bucket.
        with_second = await run_one(settings, edit(loras=[{"uri": second_key, "scale": 1.0}]), seen)
        both_request = edit(loras=[{"uri": first}, {"uri": second, "scale": 1.0}])
        both = await run_one(settings, both_request, seen)
        replayed = await run_one(settings, both_request, seen)  # a redelivery: answered from S3
        hits_before = lookups(worker, "hit")
        again = await run_one(settings, edit(loras=[{"uri": first}]), seen)
        hits_after = lookups(worker, "hit")
        after = await run_one(settings, edit(), seen)
        assert await wait_for_no_lag(settings) == {f"{settings.kafka.request_topic}-{p}": 0 for p in range(2)}

    assert all(r.status is EditStatus.SUCCEEDED for r in seen), [r.error for r in seen]
    named = {"plain": plain, "with_first": with_first, "zero": zero, "with_second": with_second}
    named |= {"both": both, "again": again, "after": after}
    digest = {name: r.output.sha256 for name, r in named.items() if r.output is not None}
    assert digest["with_first"] != digest["plain"]
    assert digest["zero"] == digest["plain"]  # scale 0: the no-adapter output
    assert len({digest["with_first"], digest["with_second"], digest["both"]}) == 3
    assert digest["again"] == digest["with_first"]
    assert digest["after"] == digest["plain"]  # no leakage: a fresh worker's output, byte for byte

    assert with_first.params is not None
    assert with_first.params.loras[0].uri == first
    assert with_first.params.loras[0].scale == 1.0
    assert with_first.params.loras[0].sha256 == hashlib.sha256(first_data).hexdigest()
    assert with_first.params.loras[0].bytes == len(first_data)
    assert with_second.params is not None
    assert with_second.params.loras[0].uri == second
    assert both.params is not None
    assert [a.uri for a in both.params.loras] == [first, second]
    assert both.cost.adapters == 2
    assert both.cost.adapter_bytes == len(first_data) + len(second_data)
    assert both.cost.usd == plain.cost.usd  # the price is per output megapixel, adapters or not
    assert replayed.gpu_ms == 0.0
    assert replayed.output == both.output
    assert replayed.params == both.params
    assert replayed.cost == both.cost
    assert plain.params is not None
    assert plain.params.loras == []
    assert plain.cost.adapters == 0
    # Loaded (read, checked, put on the transformer) once; the second use is a cache hit.
    assert with_first.timing_ms.adapter_load > 0
    assert again.timing_ms.adapter_load == 0.0
    assert hits_after == hits_before + 1
    assert plain.timing_ms.adapter_load == 0.0

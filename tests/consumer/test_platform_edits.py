"""What platforms expect from an edit API (issue 22), through a worker on a real broker and S3 server.

The rules of one record are tested on the production handler in tests/consumer/record_path/; these
check what only the broker, the S3 server and a running worker show, two worker runs in all: several
images (redelivery, cancel in the third image, old consumers), and sizes, encoder quality and the link.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict, create_model

from consumer.cli.local_client import EditClient
from consumer.settings import Settings
from pipeline import EditJob, EditOutput, StandInEditor
from pipeline.images import size_for_area
from schemas.control import CancelRequested
from schemas.errors import ErrorCode
from schemas.results import EditCompleted, EditStatus, OutputInfo
from storage import S3Location
from tests.consumer.harness import (
    by_request,
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class ThirdImageSlow(StandInEditor):
    """Fast stand-in edits, except the image of seed `slow_seed`: 25 steps of 800 ms, and `started` is set
    when it begins, so a cancel can be sent while it runs."""

    def __init__(self, slow_seed: int) -> None:
        super().__init__(edit_ms=100)
        self.slow_seed = slow_seed
        self.started = threading.Event()
        self._slow = StandInEditor(edit_ms=25 * 800, fault=lambda job: self.started.set())

    def edit(self, job: EditJob) -> EditOutput:
        if job.seed == self.slow_seed:
            return self._slow.edit(job)
        return super().edit(job)


class IgnoringUnknownFields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def before_issue_22() -> type[BaseModel]:
    """The result as a platform's consumer written before issue 22 reads it: the fields of that time
    (no `outputs`, no link or seed per output), anything else ignored, as the README asks of consumers."""
    added = {"url", "url_expires_at", "seed"}
    old_output: Any = create_model(  # type: ignore[call-overload]
        "OutputInfo",
        __base__=IgnoringUnknownFields,
        **{name: (f.annotation, f) for name, f in OutputInfo.model_fields.items() if name not in added},
    )
    fields: dict[str, Any] = {
        name: (f.annotation, f) for name, f in EditCompleted.model_fields.items() if name != "outputs"
    }
    fields["output"] = (old_output | None, None)
    model: type[BaseModel] = create_model("EditCompleted", __base__=IgnoringUnknownFields, **fields)  # type: ignore[call-overload]
    return model


async def test_several_images_redelivery_cancel_in_the_third_image_and_old_consumers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "shots/a.png", png_bytes(64, 64))
    four = request(settings, image, seed=10, num_images=4)
    canceled = request(settings, image, seed=20, num_images=4)
    editor = ThirdImageSlow(slow_seed=22)

    async with running_worker(settings, lambda: editor):
        await publish(settings, four)
        (first,) = await results(settings, count=1)
        # As if a worker had died after storing two of the four images: the redelivery makes the rest.
        for output in first.outputs[2:]:
            gone = stored_at(output.uri)
            store.client.delete_object(Bucket=gone.bucket, Key=gone.key)
        edits_before = editor.edits
        await publish(settings, four)
        await results(settings, count=2)
        edits_after_redelivery = editor.edits
        await publish(settings, four)  # everything stored: answered from S3 alone
        await results(settings, count=3)
        edits_after_stored = editor.edits

        await publish(settings, canceled)
        await asyncio.to_thread(editor.started.wait, 60)  # the third image (seed 20 + 2) is being made
        async with EditClient(settings.kafka) as client:
            await client.cancel(CancelRequested(request_id=canceled.request_id))
        records = await read_topic(settings, settings.kafka.result_topic, count=4)
        assert set((await wait_for_no_lag(settings)).values()) == {0}

    events = by_request([EditCompleted.model_validate_json(r.value) for r in records if r.value])
    done, redelivered, answered = events[four.request_id]
    # Four images: distinct seeds, objects and pictures; the cost is the sum of the four.
    assert done.status is EditStatus.SUCCEEDED, done.error
    assert [o.seed for o in done.outputs] == [10, 11, 12, 13]
    keys = [o.uri.removeprefix(f"s3://{settings.s3.output_bucket}/") for o in done.outputs]
    assert keys == [f"edits/{four.request_id}.png", *(f"edits/{four.request_id}-{i}.png" for i in (1, 2, 3))]
    assert len({o.sha256 for o in done.outputs}) == 4
    assert done.cost.images == 4
    assert done.cost.output_megapixels == pytest.approx(4 * 64 * 64 / 1e6)
    assert done.cost.usd == pytest.approx(4 * 64 * 64 / 1e6 * 0.002, abs=1e-8)
    # The redelivery generated the two missing images only, the same bytes as before; then none at all.
    assert edits_after_redelivery - edits_before == 2
    assert redelivered.transformer_passes == 2 * 2 * 25
    assert [o.sha256 for o in redelivered.outputs] == [o.sha256 for o in done.outputs]
    assert redelivered.cost == done.cost
    assert edits_after_stored == edits_after_redelivery
    assert answered.timing_ms.inference == 0.0
    assert [o.sha256 for o in answered.outputs] == [o.sha256 for o in done.outputs]
    objects = output_objects(store, settings)
    assert {hashlib.sha256(objects[key]).hexdigest() for key in keys} == {o.sha256 for o in done.outputs}

    # The cancel stopped the third image mid-way (steps are counted over the four: 51-75 are the third's).
    (stopped,) = events[canceled.request_id]
    assert stopped.status is EditStatus.CANCELED
    assert stopped.error is not None
    match = re.search(r"after step (\d+)/100", stopped.error.message)
    assert match is not None, stopped.error.message
    assert 50 < int(match.group(1)) < 75
    assert stopped.cost.usd == 0
    assert not [key for key in objects if canceled.request_id in key]

    # A consumer written before `outputs` existed still finds the first image in `output`.
    old = before_issue_22()
    raw = next(r.value for r in records if r.value and json.loads(r.value)["request_id"] == four.request_id)
    seen: Any = old.model_validate_json(raw)
    assert seen.output.uri == done.outputs[0].uri
    assert seen.output.sha256 == done.outputs[0].sha256


def quantization_of(quality: int) -> dict[int, list[int]]:
    """The JPEG quantization tables Pillow writes at `quality` (they depend on nothing else)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as img:
        return {k: list(v) for k, v in img.quantization.items()}  # type: ignore[attr-defined]


def stored_at(uri: str) -> S3Location:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return S3Location(bucket, key)


def webp_chunks(data: bytes) -> list[str]:
    """The chunk names of a WebP (RIFF) file, e.g. ['VP8X', 'ICCP', 'VP8L']."""
    assert (data[:4], data[8:12]) == (b"RIFF", b"WEBP")
    names, at = [], 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        names.append(data[at : at + 4].decode("ascii"))
        at += 8 + size + (size & 1)
    return names


def signed_expiry(url: str) -> tuple[datetime, int]:
    """(X-Amz-Date, X-Amz-Expires) of a SigV4 presigned URL."""
    query = parse_qs(urlsplit(url).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed, int(query["X-Amz-Expires"][0])


async def download(url: str) -> tuple[int, bytes]:
    import aiohttp
    import yarl

    async with aiohttp.ClientSession() as session, session.get(yarl.URL(url, encoded=True)) as response:
        return response.status, await response.read()


async def test_sizes_quality_and_the_link_through_a_worker(make_settings: Callable[..., Settings]) -> None:
    ttl = 2
    settings = make_settings(s3={"presign_ttl_s": ttl})
    store = await prepare(settings)
    base = stage_image(store, settings, "shots/base.png", png_bytes(300, 200))
    sizes: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
        "preset": ({"image_size": "landscape_16_9"}, (1024, 576)),
        "aspect": ({"aspect_ratio": "9:16", "megapixels": 0.25}, size_for_area(9 / 16, 0.25)),
        "match": ({"aspect_ratio": "match_input", "megapixels": 0.5}, size_for_area(1.5, 0.5)),
    }
    encodings = {
        "jpeg-30": {"format": "jpeg", "quality": 30},
        "jpeg-90": {"format": "jpeg", "quality": 90},
        "webp-30": {"format": "webp", "quality": 30},
        "webp-90": {"format": "webp", "quality": 90},
        "webp-lossless": {"format": "webp", "lossless": True},
    }
    sized = {name: request(settings, base, **fields) for name, (fields, _) in sizes.items()}
    noisy = io.BytesIO()
    Image.merge("RGB", [Image.effect_noise((128, 96), 60 + 20 * i) for i in range(3)]).save(noisy, "PNG")
    textured = stage_image(store, settings, "shots/textured.png", noisy.getvalue())  # detail to compress
    encoded = {
        name: request(settings, textured, seed=4, width=128, height=96, output={**spec, "metadata": "strip"})
        for name, spec in encodings.items()
    }
    tag = uuid.uuid4().hex[:6]
    conflicts: dict[str, dict[str, Any]] = {
        f"conflict-a-{tag}": {"image_size": "square", "megapixels": 1.0},
        f"conflict-b-{tag}": {"width": 512, "height": 512, "aspect_ratio": "1:1"},
    }
    linked = encoded["jpeg-90"]

    async with running_worker(settings, lambda: StandInEditor(edit_ms=0)):
        for req in [*sized.values(), *encoded.values()]:
            await publish(settings, req)
        for request_id, fields in conflicts.items():
            raw = {"request_id": request_id, "image": base, "prompt": "x", **fields}
            await publish(settings, json.dumps(raw).encode(), key=request_id.encode())
        count = len(sized) + len(encoded) + len(conflicts)
        events = by_request(await results(settings, count=count))
        (first_link,) = events[linked.request_id]
        assert first_link.output is not None
        assert first_link.output.url is not None
        status, body = await download(first_link.output.url)
        await asyncio.sleep(1.1)  # X-Amz-Date has whole seconds: a later signature is another link
        await publish(settings, linked)
        again = by_request(await results(settings, count=count + 1))[linked.request_id][-1]

    # Each size form gives the geometry rule's size; conflicting forms are refused naming both.
    for name, (_, expected) in sizes.items():
        (event,) = events[sized[name].request_id]
        assert event.status is EditStatus.SUCCEEDED, event.error
        assert event.output is not None
        assert (event.output.width, event.output.height) == expected, name
        with Image.open(io.BytesIO(store.fetch(stored_at(event.output.uri)))) as img:
            assert img.size == expected
    for request_id, fields in conflicts.items():
        (event,) = events[request_id]
        assert event.error is not None
        assert event.error.code is ErrorCode.INVALID_EVENT
        assert "conflict" in event.error.message
        for field in fields:
            assert field.split("_")[0] in event.error.message

    # Quality takes effect in the bytes: JPEG's quantization tables are the quality's, WebP lossless is
    # VP8L, and a lower quality is fewer bytes.
    stored: dict[str, bytes] = {}
    for name, req in encoded.items():
        (event,) = events[req.request_id]
        assert event.status is EditStatus.SUCCEEDED, event.error
        assert event.output is not None
        stored[name] = store.fetch(stored_at(event.output.uri))
        assert hashlib.sha256(stored[name]).hexdigest() == event.output.sha256
    for quality in (30, 90):
        with Image.open(io.BytesIO(stored[f"jpeg-{quality}"])) as img:
            assert {k: list(v) for k, v in img.quantization.items()} == quantization_of(quality)  # type: ignore[attr-defined]
    assert len(stored["jpeg-30"]) < len(stored["jpeg-90"])
    assert "VP8L" in webp_chunks(stored["webp-lossless"])  # the lossless bitstream
    assert "VP8 " in webp_chunks(stored["webp-30"])  # the lossy one
    assert len(stored["webp-30"]) < len(stored["webp-90"]) < len(stored["webp-lossless"])

    # The link downloads exactly the stored object and says when it expires: X-Amz-Date + X-Amz-Expires
    # is url_expires_at (or the second after it), the instant after which S3 refuses a SigV4 link. That
    # refusal itself cannot be shown here: the moto server (5.2.6) never reads X-Amz-Expires and serves an
    # expired link (checked: 200 four seconds after url_expires_at; its s3/responses.py has no expiry
    # check). A redelivery gets a fresh link to the same bytes.
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == first_link.output.sha256
    assert body == stored["jpeg-90"]
    for event in (first_link, again):
        assert event.output is not None
        assert event.output.url is not None
        assert event.output.url_expires_at is not None
        signed, expires_s = signed_expiry(event.output.url)
        assert expires_s == ttl
        assert (
            timedelta(0)
            <= signed + timedelta(seconds=expires_s) - event.output.url_expires_at
            <= timedelta(seconds=1)
        )
    assert again.output is not None
    assert again.timing_ms.inference == 0.0
    assert again.output.url != first_link.output.url
    assert again.output.url_expires_at > first_link.output.url_expires_at  # type: ignore[operator]
    assert again.output.url is not None
    status, fresh = await download(again.output.url)
    assert (status, fresh) == (200, body)

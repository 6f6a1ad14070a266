"""Every output says where it came from: the result's provenance, XMP in the file, a signed C2PA manifest.

A real worker run (tiny model, real Kafka and S3); the files are read back with Pillow (XMP) and hashlib.
The per-record rules (C2PA signing, signing failures, adapters on redelivery) run on the record path:
tests/consumer/record_path/test_provenance.py.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from importlib.metadata import version

import pytest
import torch
from PIL import Image

from consumer.settings import Settings
from pipeline import Editor
from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.loader import locate_model
from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT
from schemas.requests import OutputFormat
from schemas.results import EditCompleted, EditStatus
from storage import ImageStore, S3Location
from tests.consumer.harness import (
    by_request,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    wait_for_no_lag,
)
from tests.inputs import xmp_of
from tests.pipeline.test_identity import documented_hash

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def jpeg_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 160, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def stage(store: ImageStore, settings: Settings, key: str, data: bytes) -> str:
    location = S3Location(settings.s3.input_bucket, key)
    store.put_object(location, data, content_type="application/octet-stream")
    return location.uri


def object_of(event: EditCompleted, objects: dict[str, bytes], settings: Settings) -> bytes:
    assert event.output is not None
    prefix = f"s3://{settings.s3.output_bucket}/"
    return objects[event.output.uri.removeprefix(prefix)]


async def test_outputs_are_marked_and_the_result_says_where_they_came_from(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    base, reference = png_bytes(96, 64), jpeg_bytes(64, 64)
    base_uri = stage(store, settings, "shots/base.png", base)
    reference_uri = stage(store, settings, "shots/ref.jpg", reference)
    png = request(settings, base_uri, references=[reference_uri], seed=11, output={"format": "png"})
    jpeg = request(settings, base_uri, output={"format": "jpeg"})
    webp = request(settings, base_uri, output={"format": "webp"})
    stripped = request(settings, base_uri, output={"format": "png", "metadata": "strip"})

    async with running_worker(settings, lambda: tiny_editor):
        for req in (png, jpeg, webp, stripped):
            await publish(settings, req)
        events = await results(settings, count=4)
        await publish(settings, png)  # a redelivered request is answered from S3
        events = await results(settings, count=5)
        assert await wait_for_no_lag(settings) == no_lag(settings)

    grouped = by_request(events)
    objects = output_objects(store, settings)
    tiny_revision = documented_hash(locate_model(PipelineSettings(model=TINY_RANDOM)))
    base_sha, reference_sha = hashlib.sha256(base).hexdigest(), hashlib.sha256(reference).hexdigest()

    for req in (png, jpeg, webp, stripped):
        event = grouped[req.request_id][0]
        assert event.status is EditStatus.SUCCEEDED, event.error
        prov = event.provenance
        assert prov is not None
        assert prov.model.id == TINY_RANDOM
        assert (prov.model.revision, prov.model.revision_source) == (tiny_revision, "directory")
        assert (prov.dtype, prov.quantization, prov.compiled) == ("float32", "none", False)
        assert prov.attention == "native"
        assert prov.scheduler == "FlowMatchEulerDiscreteScheduler"
        assert prov.versions == {
            name: version(name) for name in ("klein-edit", "diffusers", "transformers", "torch")
        } | ({"cuda": torch.version.cuda} if torch.version.cuda else {})
        assert event.params is not None
        assert prov.seed == event.params.seed
        assert prov.adapters is None
        assert prov.digital_source_type == DIGITAL_SOURCE_TYPE_EDIT
        assert prov.c2pa is False
        expected_inputs = [(base_uri, base_sha)]
        if req is png:
            expected_inputs.append((reference_uri, reference_sha))
        assert [(item.uri, item.sha256) for item in prov.inputs] == expected_inputs

        data = object_of(event, objects, settings)
        assert event.output is not None
        assert hashlib.sha256(data).hexdigest() == event.output.sha256
        xmp = xmp_of(data)
        if req is stripped:
            assert xmp is None
            assert prov.xmp is False
            continue
        assert prov.xmp is True
        assert xmp is not None, f"{event.output.format}: no XMP"
        assert xmp["DigitalSourceType"] == DIGITAL_SOURCE_TYPE_EDIT
        assert xmp["RequestId"] == req.request_id
        assert xmp["Model"] == TINY_RANDOM
        assert xmp["ModelRevision"] == tiny_revision
    assert {grouped[r.request_id][0].output.format for r in (png, jpeg, webp)} == set(OutputFormat)  # type: ignore[union-attr]

    first, again = grouped[png.request_id]
    assert again.output == first.output
    assert again.provenance == first.provenance

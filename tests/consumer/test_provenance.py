"""Every output says where it came from: the result's provenance, XMP in the file, a signed C2PA manifest.

Real worker runs (tiny model, real Kafka and S3); the files are read back with independent readers:
Pillow for XMP, c2pa-python for the manifest (trusting only the test's own root), hashlib for the inputs.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from consumer.settings import Settings
from pipeline import Editor, KleinEditor, StandInEditor
from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.loader import locate_model
from pipeline.signing import ManifestFacts, ManifestSigner, SigningFailed
from schemas.errors import ErrorCode
from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT
from schemas.requests import OutputFormat
from schemas.results import EditCompleted, EditStatus
from storage import ImageStore, S3Location
from tests.adapters import adapter_file
from tests.c2pa_chain import SigningChain, make_chain, read_manifest
from tests.consumer.harness import (
    by_request,
    dead_letters,
    no_lag,
    output_objects,
    png_bytes,
    prepare,
    publish,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_no_lag,
)
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


def xmp_of(data: bytes) -> dict[str, str] | None:
    image = Image.open(io.BytesIO(data))
    image.load()
    if "xmp" not in image.info:
        return None
    description: dict[str, str] = image.getxmp()["xmpmeta"]["RDF"]["Description"]
    return description


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


def signing_settings(
    make_settings: Callable[..., Settings], chain: SigningChain, tmp_path: Path, **sections: Any
) -> Settings:
    key, certs = chain.write(tmp_path)
    return make_settings(provenance={"signing_key_file": key, "certificate_chain_file": certs}, **sections)


async def test_a_configured_key_signs_every_output_with_c2pa(
    make_settings: Callable[..., Settings], tiny_editor: Editor, tmp_path: Path
) -> None:
    chain = make_chain()
    settings = signing_settings(make_settings, chain, tmp_path)
    store = await prepare(settings)
    base, reference = png_bytes(64, 96), jpeg_bytes(64, 64)
    base_uri = stage(store, settings, "base.png", base)
    reference_uri = stage(store, settings, "ref.jpg", reference)
    requests = {
        fmt: request(settings, base_uri, references=[reference_uri], output={"format": fmt.value})
        for fmt in OutputFormat
    }
    stripped = request(settings, base_uri, output={"metadata": "strip"})

    async with running_worker(settings, lambda: tiny_editor):
        for req in [*requests.values(), stripped]:
            await publish(settings, req)
        events = await results(settings, count=4)

    grouped = by_request(events)
    objects = output_objects(store, settings)
    hashes = {hashlib.sha256(base).hexdigest(), hashlib.sha256(reference).hexdigest()}
    for fmt, req in requests.items():
        (event,) = grouped[req.request_id]
        assert event.status is EditStatus.SUCCEEDED, event.error
        assert event.provenance is not None
        assert (event.provenance.c2pa, event.provenance.xmp) == (True, True)
        data = object_of(event, objects, settings)
        state, manifest = read_manifest(data, fmt.content_type, chain.root_pem)
        assert state == "Trusted", fmt
        (actions,) = [a["data"]["actions"] for a in manifest["assertions"] if a["label"] == "c2pa.actions.v2"]
        assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
        assert actions[1]["digitalSourceType"] == DIGITAL_SOURCE_TYPE_EDIT
        assert actions[1]["softwareAgent"]["name"] == TINY_RANDOM
        assert actions[1]["softwareAgent"]["version"] == event.provenance.model.revision
        ingredients = {item["instance_id"].removeprefix("sha256:") for item in manifest["ingredients"]}
        assert ingredients == hashes == {item.sha256 for item in event.provenance.inputs}
        xmp = xmp_of(data)
        assert xmp is not None
        assert xmp["RequestId"] == req.request_id

    (plain,) = grouped[stripped.request_id]
    assert plain.provenance is not None
    assert (plain.provenance.c2pa, plain.provenance.xmp) == (False, False)
    data = object_of(plain, objects, settings)
    assert xmp_of(data) is None
    assert b"c2pa" not in data


class FaultySigner:
    """Fails for request ids containing "broken" always, "flaky" the first time; else signs for real."""

    def __init__(self, inner: ManifestSigner) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}

    def sign(self, data: bytes, fmt: OutputFormat, facts: ManifestFacts) -> bytes:
        calls = self.calls[facts.request_id] = self.calls.get(facts.request_id, 0) + 1
        if "broken" in facts.request_id or ("flaky" in facts.request_id and calls == 1):
            raise SigningFailed("C2PA signing failed: HSM unreachable (injected)")
        return self._inner.sign(data, fmt, facts)


async def test_a_signing_failure_is_retried_and_never_stores_an_unsigned_output(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    chain = make_chain()
    settings = signing_settings(
        make_settings, chain, tmp_path, worker={"max_attempts": 3, "retry_backoff_s": 0.1}
    )
    real = ManifestSigner.from_settings(settings.provenance)
    assert real is not None
    signer = FaultySigner(real)
    store = await prepare(settings)
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    flaky = request(settings, image, request_id="flaky-1")
    broken = request(settings, image, request_id="broken-1")

    async with running_worker(settings, lambda: StandInEditor(edit_ms=10), signer=signer):
        await publish(settings, flaky)
        await publish(settings, broken)
        events = await results(settings, count=2)
        (dead,) = await dead_letters(settings, count=1, settle_s=0.5)

    grouped = by_request(events)
    (recovered,) = grouped["flaky-1"]
    assert recovered.status is EditStatus.SUCCEEDED
    assert recovered.attempt == 2
    assert recovered.provenance is not None
    assert recovered.provenance.c2pa is True
    (failed,) = grouped["broken-1"]
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code is ErrorCode.INTERNAL
    assert failed.error.retryable is True
    assert "C2PA signing failed" in failed.error.message
    assert failed.output is None
    assert failed.provenance is None
    assert failed.attempt == settings.worker.max_attempts  # retried with backoff, then dead-lettered
    assert signer.calls["broken-1"] == settings.worker.max_attempts
    assert dead.key == b"broken-1"
    keys = list(output_objects(store, settings))
    assert not any("broken-1" in key for key in keys), keys
    assert any("flaky-1" in key for key in keys)


@pytest.fixture(scope="module")
def adapter_editor() -> KleinEditor:
    """An editor of this module's own: adapters are loaded into it."""
    return KleinEditor.load(PipelineSettings(model=TINY_RANDOM, device="cpu", warmup=False))


async def test_adapters_are_part_of_the_provenance_also_when_redelivered(
    make_settings: Callable[..., Settings], adapter_editor: KleinEditor
) -> None:
    bucket = f"adapters-{uuid.uuid4().hex[:10]}"
    settings = make_settings(s3={"adapter_buckets": [bucket]})
    store = await prepare(settings)
    store.ensure_bucket(bucket)
    lora = adapter_file(seed=5)
    lora_uri = S3Location(bucket, "brand.safetensors").uri
    store.put_object(S3Location(bucket, "brand.safetensors"), lora, content_type="application/octet-stream")
    image = stage_image(store, settings, "a.png", png_bytes(64, 64))
    req = request(settings, image, loras=[{"uri": lora_uri, "scale": 0.5}])

    async with running_worker(settings, lambda: adapter_editor):
        await publish(settings, req)
        await results(settings, count=1, timeout_s=90)
        await publish(settings, req)  # answered from the stored object
        first, again = await results(settings, count=2, timeout_s=90)

    assert first.status is EditStatus.SUCCEEDED, first.error
    assert first.params is not None
    assert first.provenance is not None
    assert first.provenance.adapters == first.params.loras
    (adapter,) = first.provenance.adapters
    assert (adapter.uri, adapter.scale) == (lora_uri, 0.5)
    assert adapter.sha256 == hashlib.sha256(lora).hexdigest()
    assert again.provenance == first.provenance
